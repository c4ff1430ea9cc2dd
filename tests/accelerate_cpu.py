"""``turnrl`` on CPU processes with accelerate's FSDP or DeepSpeed engine switched on: a test entry point.

accelerate builds FSDP and DeepSpeed only on GPUs (and similar devices); on CPU processes it runs plain DDP over
gloo whatever the launch config says (turnrl prints so). To run turnrl's training loop under the real engines on a
machine without a GPU, this entry point lets accelerate set up the CPU processes as usual, then switches its state
to the engine the launch config asked for, built the way accelerate builds it on a GPU from the same environment
(``FullyShardedDataParallelPlugin()``, ``DeepSpeedPlugin()``; DeepSpeed's communication over gloo), and runs the
turnrl command line with the given arguments:

    accelerate launch --config_file configs/accelerate/fsdp.yaml --num_processes 2 tests/accelerate_cpu.py \\
        train --run_dir RUN --algo.name swift --optim.precision fp32

Each process prints ``accelerate_cpu: <engine> <wrapped model class> <optimizer class> fsdp_units=<n>`` once the
trainer has prepared its model, so a test can tell that the engine really wrapped it (and, under FSDP, into how
many shard units).
"""

from __future__ import annotations

import os
import sys


def switch_engine(accelerator) -> None:
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType

    state = accelerator.state
    if state.distributed_type != DistributedType.MULTI_CPU:
        return
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        from accelerate.utils import FullyShardedDataParallelPlugin

        plugin = FullyShardedDataParallelPlugin()
        if state.mixed_precision != "no":
            plugin.set_mixed_precision(state.mixed_precision)
        PartialState._shared_state["distributed_type"] = DistributedType.FSDP
        state.distributed_type = DistributedType.FSDP
        state.fsdp_plugin = plugin
    elif os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        import deepspeed
        from accelerate.utils import DeepSpeedPlugin

        deepspeed.init_distributed(dist_backend="gloo", auto_mpi_discovery=False)
        plugin = DeepSpeedPlugin()
        plugin.set_mixed_precision(state.mixed_precision)  # accelerate leaves precision to DeepSpeed's config
        plugin.select(_from_accelerator_state=True)
        PartialState._shared_state["distributed_type"] = DistributedType.DEEPSPEED
        state.distributed_type = DistributedType.DEEPSPEED
        state._mixed_precision = "no"
        state.deepspeed_plugins = plugin


def main() -> None:
    import accelerate

    from turnrl.train import loop as train_loop

    accelerator_init = accelerate.Accelerator.__init__

    def init(self, *args, **kwargs):
        accelerator_init(self, *args, **kwargs)
        switch_engine(self)

    accelerate.Accelerator.__init__ = init
    loop_init = train_loop.TrainLoop.__init__

    def report(self, *args, **kwargs):
        loop_init(self, *args, **kwargs)
        optimizer = getattr(self.optimizer, "optimizer", self.optimizer)
        inner = getattr(optimizer, "optimizer", None)  # DeepSpeed's ZeRO optimizer wraps the real one
        # FSDP2 turns each module it shards into an "FSDP<class>" (the root and every wrapped decoder layer)
        units = sum(type(m).__name__.startswith("FSDP") for m in self.model.modules())
        print(f"accelerate_cpu: {self.accelerator.distributed_type.value} {type(self.model).__name__} "
              f"{type(optimizer).__name__}{'/' + type(inner).__name__ if inner is not None else ''} "
              f"fsdp_units={units}", flush=True)

    train_loop.TrainLoop.__init__ = report
    from turnrl.cli import main as turnrl_main

    sys.argv = ["turnrl", *sys.argv[1:]]
    turnrl_main()


if __name__ == "__main__":
    main()
