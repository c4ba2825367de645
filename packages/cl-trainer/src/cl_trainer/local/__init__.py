"""Local execution backend: ``python -m cl_trainer.local <veRL hydra overrides>``.

A single-process stand-in for ``python -m verl.trainer.main_ppo`` on CPU or one GPU: same config,
same algorithm functions, same log lines and checkpoint layout, so a run is indistinguishable
downstream from a veRL run.
"""
