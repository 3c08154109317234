"""Training DINO for real: the config, the device rule, the trainer, a run's folder, the GPU
multi-crop.

    config         TrainConfig, YAML files and --set overrides
                   (shipped configs in vitdino_core/configs/)
    device         which device and precision, torchrun's processes
    trainer        DINOTrainer: one step, the loop, its state for checkpoints and resuming
    run_state      a run's folder on disk: lock, metrics, resuming's config, stopping on a signal
    multicrop_gpu  DINO's multi-crop on the device, batched (gpu_augment)

These modules build on the notebook-named ones one level up and never the other way round.
The command is `python -m vitdino_core.train`.
"""
