"""The tiny PT2V recipe of tests/test_t2v.py as config files (a recipe names its stages
by config): --config=tests/configs/pt2v_tiny.py:<t2v|stage1|stage2|stage3>. The identity
shapes at 32 px, the tiny DiT of the text-to-video tests, 2 steps per stage; stage I
keeps stage II's clip length here, so both train one compiled program."""

import ml_collections

from experiments import pt2v
from tests.test_t2v import NUM_FRAMES, SIZE, tiny_t2v_config

STEPS = 2


def identity_data(config) -> None:
  config.data.update(name="shapes_identity", buckets=(("video", NUM_FRAMES, SIZE, SIZE, 8),))
  config.data.shapes.update(num_videos=32, num_images=0, reference_size=16, paths="lanes")


def get_config(arg: str = "stage3"):
  t2v = tiny_t2v_config("", STEPS)
  identity_data(t2v)
  t2v.train.eval_every = -1
  if arg == "t2v":
    return t2v
  config = pt2v.get_config(arg)
  config.model, config.text, config.flow = t2v.model, t2v.text, t2v.flow
  config.data = t2v.data
  config.pt2v.encoder.model = ml_collections.ConfigDict(
      dict(pt2v.tiny_vision_tower(), hidden_size=16, intermediate_size=32, image_size=16)
  )
  config.eval.update(num_prompts_per_bucket=2, num_steps=2, num_videos_to_write=1)
  config.optimizer.warmup_steps = 1
  config.train.update(num_steps=STEPS, log_every=1, checkpoint_every=STEPS, eval_every=-1)
  return config
