"""The CPU demo: shapes data -> TAE -> text-to-video DiT -> prompt-following score.

    python -m mgjax.train --config=experiments/t2v_shapes.py --workdir=workdir/demo

One command runs every stage in --workdir: makes the synthetic shapes videos and
stills (W/shapes), trains the tiny TAE on them (W/tae), encodes the training set to
latents (W/latents), trains the tiny DiT with joint image + video batches, then
samples videos for held-out prompts (colour, shape and motion combinations never
seen in training), writes them to W/samples/step_N and prints the shapes checker's
score. Killed at any point, the same command resumes where it stopped. Then:

    python -m mgjax.sample --workdir=workdir/demo --prompt="a cyan square moves up on a plain background"
"""

import os

from mgjax import configs

HERE = os.path.dirname(os.path.abspath(__file__))


def get_config(arg: str = ""):
  if arg:
    raise ValueError(f"experiments/t2v_shapes.py takes no argument; got {arg!r}.")
  config = configs.load_config(os.path.join(HERE, "t2v.py") + ":tiny")
  with config.unlocked():
    # The CPU budget goes to the DiT: its objects follow the motion words only after
    # some 2,500 steps (docs/benchmarks.md); a TAE of 600 steps (26 dB) is enough.
    config.tae.update(train_config=os.path.join(HERE, "tae.py") + ":tiny", train_steps=600)
    config.train.num_steps = 2500
    config.data.update(name="shapes", fps=16.0, image_fraction=0.2)
    # Each motion on its own lane (mgjax/data/shapes.py PATHS): the motion word then
    # says where the shape is in every frame, which the tiny DiT learns like colour;
    # with paths anywhere it says only how frames relate, which it did not learn here.
    config.data.shapes.update(
        num_videos=512, num_images=256, num_frames=32, height=64, width=64, paths="lanes"
    )
    config.eval.update(num_prompts_per_bucket=24, num_steps=50, cfg_scale=4.0)
    config.flow.cfg_scale = 4.0  # mgjax.sample's default
    # More training time at high noise (t ~ logit-normal(-1, 1)): on these small
    # latents where the object sits, and that it is one object in every frame, is
    # decided early in sampling; t_mean=0 left objects jumping between latent frames.
    config.flow.t_mean = -1.0
    # The prompt encoders read one token per word (mgjax/text/tokenizers.py, "words";
    # no two words of the shapes captions share an id among 2,048) instead of bytes:
    # a word is then one token for the tiny DiT to attend to.
    for name in ("ul2", "metaclip"):
      config.text.encoders[name].update(tokenizer="words", max_length=32)
      config.text.encoders[name].model.vocab_size = 2048
    config.text.encoders.metaclip.model.max_position_embeddings = 32
  return config
