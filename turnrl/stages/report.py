"""The run's plots (PNG) and one self-contained ``report.html``: table, plots, weight diagnostics, conversations.

Plots, written to ``plots/`` in the run directory (matplotlib's Agg renderer, no display needed):

- ``accuracy.png``: accuracy ± SE per method, and each method's paired accuracy difference against Base with its
  bootstrap 95% interval;
- ``rewards.png``: the reward distribution of the logged data and of each policy's test conversations;
- ``training.png``: loss and gradient norm per optimizer step of each trained algorithm (``train_log.jsonl``);
- ``<family>_at_k.png``: for metrics indexed by k (``multi@1..T`` of the feedback environment), mean ± SE against k;
- ``weights.png``: the training weights of each weighted algorithm (``diagnostics.json``).

``report.html`` opens without a network: CSS and JavaScript inline, plots as data URIs, the test conversations
embedded as JSON (each distinct text stored once, so the prompts that every method shares cost nothing). Its
conversation browser shows, for a chosen test question, Base's conversation beside each method's, with the rewards
and any judge justifications (a second judge's too). Where a second judge scored conversations, a section shows
the two judges' agreement per rubric item (:mod:`turnrl.stages.rejudge`).
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from turnrl import stats
from turnrl.errors import has_extra
from turnrl.judge import METRICS as JUDGE_METRICS, SECOND
from turnrl.layout import DIAGNOSTICS, RunDir, second_judge_file, TRAIN_LOG
from turnrl.records import Task, Trajectory, atomic_write_text, iter_jsonl, read_json, read_tasks, \
    read_trajectories
from turnrl.stages.rejudge import conversation_key, read_records
from turnrl.stages.comparison import AT_K, Comparison, display_name
from turnrl.stages.tables import agreement_tables, describe_runs, diagnostics_table, paired_tables, results_table, \
    settings_mismatch
from turnrl.stages.plots import method_colors, plot_accuracy, plot_at_k, plot_rewards, plot_training, plot_weights, \
    recorded_ess
from turnrl.log import get_logger

logger = get_logger(__name__)

TEMPLATE = Path(__file__).with_name("report_template.html")


# --------------------------------------------------------------------------------------------- run directory


@dataclass
class RunFiles:
    """What the report reads besides the comparison; each part is empty where its file is absent."""

    logged: list[dict[str, Any]]
    """scored/trajectories.jsonl: the logged (training) data."""
    conversations: dict[str, list[Trajectory]]
    """eval/<method>/conversations.jsonl: each method's test conversations."""
    tasks: dict[str, Task]
    logs: dict[str, list[dict[str, Any]]]
    """train/<algo>/train_log.jsonl"""
    diagnostics: dict[str, dict[str, Any]]
    """train/<algo>/diagnostics.json"""
    config: dict[str, Any] | None
    timings: dict[str, Any] | None


def read_run(comparison: Comparison) -> RunFiles:
    run_dir = comparison.run_dir

    run = RunDir(run_dir)

    def optional_json(path: Path) -> Any:
        return read_json(path) if path.exists() else None

    logged = [obj for _, obj in iter_jsonl(run.scored)] if run.scored.exists() else []
    logs = {m: run.conversations(m, comparison.split) for m in comparison.methods}
    conversations = {m: read_trajectories(log) for m, log in logs.items() if log.exists()}
    for m, trajectories in conversations.items():
        with_second_judge(trajectories, logs[m])
    tasks: dict[str, Task] = {}
    for split in ("test", "val", "train"):
        if run.task_file(split).exists():
            for t in read_tasks(run.task_file(split)):
                tasks.setdefault(t.id, t)
    logs, diagnostics = {}, {}
    for folder in sorted(run.train().glob("*")):
        if (folder / TRAIN_LOG).exists():
            logs[folder.name] = [obj for _, obj in iter_jsonl(folder / TRAIN_LOG)]
        if (folder / DIAGNOSTICS).exists():
            diagnostics[folder.name] = read_json(folder / DIAGNOSTICS)
    return RunFiles(logged, conversations, tasks, logs, diagnostics, optional_json(run.config),
                    optional_json(run.timings))


def with_second_judge(trajectories: list[Trajectory], log: Path) -> None:
    """Show ``turnrl rejudge``'s second judge with the conversations it judged (in memory only: its scores as
    ``judge_second_*`` components, its answer in ``meta["judge_second"]``)."""
    path = second_judge_file(log)
    if not path.exists():
        return
    records = {str(r["id"]): r for r in read_records(path)}
    for traj in trajectories:
        rec = records.get(traj.id)
        if rec is None or rec.get("conversation") != conversation_key(traj.task_id, traj.messages):
            continue
        for m in JUDGE_METRICS:
            traj.rewards.pop(f"{SECOND}_{m}", None)
        scores = rec.get("scores") if rec.get("ok") and isinstance(rec.get("scores"), dict) else {}
        traj.rewards.update({f"{SECOND}_{m}": float(v) / 10 for m, v in scores.items()
                             if m in JUDGE_METRICS and isinstance(v, (int, float))})
        traj.meta[SECOND] = {k: v for k, v in rec.items() if k not in ("id", "task_id", "conversation")}


def _rewards(records: list[Any]) -> list[float]:
    values = [r.get("reward") if isinstance(r, dict) else r.reward for r in records]
    return [float(v) for v in values if isinstance(v, (int, float))]


def weight_rows(diagnostics: dict[str, dict[str, Any]]) -> list[dict[str, str]]:
    """One row per weighted algorithm: effective sample size, weight signs and range, and the group counts the
    algorithm recorded (the groups that carried no signal among them)."""
    rows = []
    for algo, diag in diagnostics.items():
        if not diag.get("weights"):
            continue
        w = np.asarray(diag["weights"], dtype=float)
        ess = recorded_ess(diag)
        groups = diag.get("groups")
        # zero_signal_groups (Swift), all-fail groups (DRIFT), groups_without_selection (STaR-GATE), ...
        group_counts = {k: v for k, v in diag.items() if "groups" in k and k != "groups" and isinstance(v, int)}
        rows.append({
            "algorithm": display_name(algo),
            "trajectories": str(len(w)),
            "groups": str(groups) if groups is not None else "",
            "ess": f"{ess:.1f} ({100 * ess / len(w):.1f}%)",
            "nonzero": f"{int((w != 0).sum())} / {int((w > 0).sum())} / {int((w < 0).sum())}",
            "range": f"{w.min():.3g} .. {w.max():.3g}",
            "group_counts": [f"{k.replace('_', ' ')}: {v}" + (f" ({100 * v / groups:.1f}% of groups)" if groups else "")
                             for k, v in group_counts.items()],
            # DRIFT: the effective sample size within each group
            "group_ess": " / ".join(f"{diag[k]:.2f}" for k in ("group_ess_mean", "group_ess_median", "group_ess_min")
                                    if isinstance(diag.get(k), (int, float))),
        })
    return rows


def logged_summary(logged: list[dict[str, Any]]) -> dict[str, str] | None:
    if not logged:
        return None
    rewards = _rewards(logged)
    accuracy = [float(r["rewards"]["accuracy"]) for r in logged if "accuracy" in r.get("rewards", {})]
    out = {"trajectories": str(len(logged)), "tasks": str(len({r.get("task_id") for r in logged})),
           "groups": str(len({r.get("group_id") for r in logged}))}
    if rewards:
        out["mean reward"] = stats.mean(rewards).fmt(1, 3)
    if accuracy:
        out["accuracy"] = stats.proportion(accuracy).fmt(100, 1) + " %"
    return out


class StringTable:
    """Each distinct text once; conversations refer to texts by index."""

    def __init__(self) -> None:
        self.index: dict[str, int] = {}
        self.items: list[str] = []

    def __call__(self, text: str) -> int:
        if text not in self.index:
            self.index[text] = len(self.items)
            self.items.append(text)
        return self.index[text]


def _judge_texts(traj: Trajectory) -> dict[str, str]:
    """What the judges wrote about a conversation (:mod:`turnrl.judge` keeps it in ``meta["judge"]`` and
    ``meta["judge_second"]``): the full answer with its justifications, or why it could not be read."""
    texts = {}
    for key, value in traj.meta.items():
        if not key.startswith("judge"):
            continue
        label = key.replace("_", " ").replace("judge second", "second judge")
        if isinstance(value, str):
            texts[label] = value
        elif isinstance(value, dict):
            label += f" ({value['model']})" if value.get("model") else ""
            if value.get("text"):
                texts[label] = value["text"]
            elif value.get("error") or value.get("failed"):
                texts[label] = f"unreadable answer ({value.get('error', 'no scores')}):\n" + \
                    (value.get("failed") or [""])[-1]
    return texts


def conversation_data(comparison: Comparison, files: RunFiles, compare_against: str = "base") -> dict[str, Any]:
    """The browser's data: the questions, and per method and question its test conversations."""
    strings = StringTable()
    conversations: dict[str, dict[str, list]] = {}
    for m, trajectories in files.conversations.items():
        answers = {r["task_id"]: r.get("answers", []) for r in comparison.results[m].rows}
        by_task: dict[str, list] = {}
        for traj in trajectories:
            runs = by_task.setdefault(traj.task_id, [])
            stated = answers.get(traj.task_id, [])  # the per-question rows list each run's answer in file order
            runs.append({
                "id": traj.id,
                "m": [[msg["role"], strings(msg["content"])] for msg in traj.messages],
                "r": traj.reward,
                "c": {k: round(float(v), 4) for k, v in traj.rewards.items()
                      if isinstance(v, (int, float)) and not isinstance(v, bool)},
                "j": {k: strings(v) for k, v in _judge_texts(traj).items()},
                "a": stated[len(runs)] if len(runs) < len(stated) else None,
                "cap": [i for i, t in enumerate(traj.turns) if t.truncated],
                "f": traj.finish,
            })
        conversations[m] = by_task
    ids = list(dict.fromkeys([t for t in files.tasks if any(t in c for c in conversations.values())] +
                             [t for c in conversations.values() for t in c]))
    questions = []
    for task_id in ids:
        task = files.tasks.get(task_id)
        questions.append({"id": task_id, "q": strings(task.question) if task else None,
                          "choices": task.choices if task else [], "gold": task.answer if task else None})
    return {"strings": strings.items, "questions": questions, "baseline": compare_against,
            "methods": [{"key": m, "name": comparison.results[m].name} for m in comparison.methods],
            "conv": conversations,
            "accuracy": {m: comparison.results[m].values("accuracy") for m in comparison.methods}}


def _script_json(obj: Any) -> str:
    """JSON safe inside a <script> element: no "</script>" or "<!--" can appear."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).replace("<", "\\u003c")


@dataclass
class Plot:
    key: str
    title: str
    caption: str
    png: bytes

    @property
    def data_uri(self) -> str:
        return "data:image/png;base64," + base64.b64encode(self.png).decode("ascii")


def make_plots(comparison: Comparison, files: RunFiles, compare_against: str = "base") -> list[Plot]:
    c = comparison
    everyone = list(dict.fromkeys(c.methods + list(files.logs) + list(files.diagnostics)))
    names = {m: display_name(m) for m in everyone}
    colors = method_colors(everyone, compare_against)
    plots = [Plot("accuracy", "Accuracy", "Accuracy ± SE per method; right: paired difference against Base on the "
                  "same questions with its 95% bootstrap interval.", plot_accuracy(c, colors, compare_against))]
    logged = _rewards(files.logged)
    per_method = {m: _rewards(trajectories) for m, trajectories in files.conversations.items()}
    if logged or any(per_method.values()):
        plots.append(Plot("rewards", "Reward distributions", "The scalar reward of every logged trajectory (the "
                          "training data) and of each policy's test conversations.",
                          plot_rewards(logged, per_method, names, colors)))
    families = sorted({AT_K.match(k)["family"] for m in c.methods for k in c.results[m].summary if AT_K.match(k)})
    for family in families:
        plots.append(Plot(f"{family}_at_k", f"{family}@k", f"{family}@k against k, per method (mean ± SE over "
                          "questions).", plot_at_k(family, c, colors)))
    if files.logs:
        plots.append(Plot("training", "Training curves", "Loss and gradient norm (before clipping) per optimizer "
                          "step; with many steps, faint: each step, solid: moving average.",
                          plot_training(files.logs, names, colors)))
    weighted = {a: d for a, d in files.diagnostics.items() if d.get("weights")}
    if weighted:
        plots.append(Plot("weights", "Training weights", "Histogram of the weight of each logged trajectory; ESS: "
                          "effective sample size, (sum |w|)^2 / sum w^2.", plot_weights(weighted, names, colors)))
    return plots


def write_plots(run_dir: Path, plots: list[Plot]) -> None:
    """plots/<key>.png, each written whole; plots of an earlier report that no longer apply are removed."""
    folder = RunDir(run_dir).plots
    folder.mkdir(parents=True, exist_ok=True)
    keep = {f"{p.key}.png" for p in plots}
    for old in folder.glob("*.png"):
        if old.name not in keep:
            old.unlink()
    for plot in plots:
        tmp = folder / f".{plot.key}.png.tmp"
        tmp.write_bytes(plot.png)
        tmp.replace(folder / f"{plot.key}.png")


def write_report(comparison: Comparison, compare_against: str = "base") -> Path:
    """Write plots/*.png and report.html in the run directory; return the report's path."""
    import jinja2
    from markupsafe import Markup

    run_dir = comparison.run_dir
    files = read_run(comparison)
    plots = make_plots(comparison, files, compare_against) if has_extra("plots") else []
    if not plots:
        logger.info("report: no plots (matplotlib is not installed: pip install 'turnrl[plots]')")
    write_plots(run_dir, plots)
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    page = env.from_string(TEMPLATE.read_text(encoding="utf-8")).render(
        title=f"turnrl report: {run_dir.resolve().name}",
        run_dir=str(run_dir),
        n_questions=max(comparison.n_questions(m) for m in comparison.methods),
        runs=describe_runs(comparison),
        results=results_table(comparison),
        mismatch=settings_mismatch(comparison),
        paired=paired_tables(comparison, compare_against),
        diagnostics=diagnostics_table(comparison),
        agreement=agreement_tables(comparison),
        best_baseline=display_name(comparison.best_baseline) if comparison.best_baseline else None,
        figures=plots,
        weights=weight_rows(files.diagnostics),
        logged=logged_summary(files.logged),
        config=json.dumps(files.config, indent=2, ensure_ascii=False) if files.config is not None else None,
        timings=files.timings,
        data=Markup(_script_json(conversation_data(comparison, files, compare_against))),
    )
    out = RunDir(run_dir).report_html
    atomic_write_text(out, page)
    return out
