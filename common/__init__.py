"""The shared plumbing every script uses: the one loader, the tiny model, record formats, the synthetic suite and
its oracle, answer matching, metrics, the command line, checkpoints, the one-GPU recipe and pictures."""
