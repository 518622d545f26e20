"""The tiny edit recipe of tests/test_t2v.py as config files (a recipe names its stages
by config): --config=tests/configs/edit_tiny.py:<stage1|stage3>. The shapes edit set
at 32 px and 16 frames, the tiny DiT of the text-to-video tests, 2 steps per stage;
stage I on its single-frame edits alone (one compiled step: the clips train in III)."""

from experiments import edit
from tests.test_t2v import NUM_FRAMES, SIZE, tiny_t2v_config

STEPS = 2


def get_config(arg: str = "stage3"):
  t2v = tiny_t2v_config("", STEPS)
  config = edit.get_config(arg)
  config.model, config.text, config.flow = t2v.model, t2v.text, t2v.flow
  config.data.update(
      name="shapes_edit",
      buckets=(("image", 1, SIZE, SIZE, 8),)
      if arg == "stage1"
      else (("video", NUM_FRAMES, SIZE, SIZE, 4),),
  )
  config.data.shapes.update(num_frames=NUM_FRAMES, height=SIZE, width=SIZE)
  if arg == "stage1":
    config.edit.manifests = ("image_edits.jsonl",)
  config.edit.shapes_edit.update(num_image_edits=12, num_video_edits=8, num_real=8, num_eval=7)
  config.edit.backtranslate.update(num_clips=4, num_steps=2, batch_size=4)
  # As many generations as edits: one compiled sampling step serves both.
  config.eval.update(num_edits=7, num_generations=7, num_steps=2, num_videos_to_write=1)
  config.optimizer.warmup_steps = 1
  config.train.update(num_steps=STEPS, log_every=1, checkpoint_every=STEPS, eval_every=-1)
  return config
