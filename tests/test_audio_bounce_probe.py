"""The bounce probe's scoring (benchmarks/audio_bounce_probe.py): peaks, exact and near hits."""

import numpy as np

from benchmarks.audio_bounce_probe import found


def test_found_counts_exact_near_and_false_peaks():
  labels = np.zeros((2, 10), np.float32)
  labels[0, [2, 7]] = 1.0  # clip 0: bounces at frames 2 and 7
  labels[1, 5] = 1.0  # clip 1: one bounce at frame 5
  p = np.zeros((2, 10), np.float32)
  p[0, 2] = 0.9  # exact
  p[0, 8] = 0.8  # one frame late: near, not exact
  p[1, 5], p[1, 6] = 0.7, 0.6  # exact; frame 6 is no peak (its neighbour is higher)
  p[1, 0] = 0.95  # a peak 5 frames from the bounce: false
  p[1, 9] = 0.4  # under 0.5: no peak
  exact, near, false = found(p, labels)
  assert exact == 2 / 3
  assert near == 1.0
  assert false == 0.5  # one false peak over two clips
