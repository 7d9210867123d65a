"""Several processes with `torch.distributed` (launched by torchrun or spawned locally).

- `group`: process-group setup (gloo on CPU, nccl on CUDA), bounded timeouts, clear errors, byte counts.
- `sampling`: exact chunk-parallel VIN sampling (each rank its chunks; the read merged by all-reduce).
- `launch`: run generation or a benchmark on P local processes.
Data-parallel training is `vin.training.trainer.train(..., group=...)` (torch DDP).
"""
