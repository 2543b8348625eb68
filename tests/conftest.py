import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the network
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One thread per process (set before torch is imported; subprocesses inherit it): the tiny models' ops are too small
# to share, and with pytest -n 2 on two cores, threads that spin-wait for each other make a test ~20x slower
# (bench's small run: 330 s with two threads beside another job, 19 s with one).
os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
