"""Small text-to-video configs for the ahead-of-time compile tests (tests/test_aot.py):
--config=tests/configs/t2v_aot.py:<fit|overflow>. One video bucket, two scanned layers,
one small frozen text encoder; `overflow` asks for a batch no v5p chip can hold."""

import ml_collections

from experiments import t2v


def get_config(arg: str = "fit"):
  config = t2v.get_config("tiny")
  config.model.num_layers = 2
  # One frozen text encoder instead of three trainable ones: a quicker compile.
  ul2 = t2v.tiny_text_encoders(width=16, trainable=False)["ul2"]
  config.text.encoders = ml_collections.ConfigDict(dict(ul2=ul2))
  batch = {"fit": 8, "overflow": 1 << 19}[arg]
  config.data.buckets = (("video", 32, 64, 64, batch),)
  return config
