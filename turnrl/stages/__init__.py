"""The pipeline's stages, in the order data flows through them (docs/design.md section 1): ``simulate`` logs
conversations, ``score`` adds their rewards, ``train`` (:mod:`turnrl.train`) fits a policy, ``evaluate`` runs it
on held-out questions, ``compare`` and ``report`` turn the evaluations into tables, plots and a report. Each
reads only the files of the stage before it."""
