"""Run-time guards and conventions: stopping on a signal or a non-finite loss, checks before anything loads, a DDP
worker's GPU, finding an experiment's runs and checkpoints, and the Lightning internals these rely on."""
