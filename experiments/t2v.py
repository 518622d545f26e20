"""Text-to-video (and image) flow-matching transformer configs: tiny | 1b | 5b | 30b.

    python -m mgjax.train --config=experiments/t2v.py:tiny --workdir=W
    python -m mgjax.train --config=experiments/t2v.py:30b --workdir=gs://.../t2v_30b \
        --config.mesh.fsdp=-1 --config.mesh.tensor=8

`tiny` runs on CPU (4 layers, width 128). `30b` is the paper's transformer: 48
LLaMa3 layers, width 6144, FFN 16384, 48 heads of 128, no GQA. `1b` and `5b` keep
head dim 128 and the paper's FFN/width ratio of 8/3 (rounded to a multiple of 256).

Sizes (from `jax.eval_shape` of the model, text projection from a 4096-wide text
encoder included): 30b 29.36B, 5b 4.93B, 1b 1.14B parameters; tests/test_dit.py
checks 30b. Modulation is adaLN-single ("shared"): a per-block Dense(D -> 6D) would
add 10.9B parameters at 30b size, beyond the paper's 30B.

Text encoders: the paper's three, frozen, each read from a Hugging Face directory
(`--config.text.encoders.<name>.path=...`; README "Text encoders"). Without the paths
a big config stops with "Text encoder ... has neither a path nor a model": a frozen
randomly initialised encoder would train the DiT against noise. Their architectures
(HF config keys, `PAPER_TEXT_ARCHITECTURES`) are in `text.architectures`, which only
weight-free tools read: `mgjax.aot` compiles random weights of those shapes where a
path is missing, since a compile's memory and FLOPs do not depend on the values, and
with `--config.data.precompute_text=True` takes the embeddings as inputs of the step,
as Movie Gen does (docs/scaling.md):

    python -m mgjax.aot --config=experiments/t2v.py:30b --topology=v5p-256 \
        --config.mesh.tensor=4 --config.mesh.context=2 \
        --config.parallel.sequence_parallel=True --config.data.precompute_text=True \
        --buckets=video:256:768:768:16

(28.15 of 95 GiB a chip, 70% headroom: the table in docs/scaling.md.) The paper
names families, not checkpoints, so the sizes are choices: UL2 is google/ul2 (20B;
its 32-layer 4096-wide encoder, 8.72B parameters), the MetaCLIP text tower MetaCLIP
H/14's (24 layers, 1024 wide, 0.35B) with 256 positions, ByT5 is byt5-small's encoder
(12 layers, 1472 wide, 0.22B).

The positional tables (in latent patches) are sized for the final 768px stage
with 256-frame clips (32 latent frames) and aspect ratios up to 16:9 (64 patches
= 1024 px on the long side). For the 256px stages set smaller tables and grow
them between stages with mgjax.models.positional.resize_positional_tables.
"""

import functools

import ml_collections

from mgjax import configs

SIZES = ("tiny", "1b", "5b", "30b")

# name: (num_layers, embed_dim, mlp_dim, num_heads)
TRANSFORMER_SHAPES = {
    "tiny": (4, 128, 384, 4),
    "1b": (16, 2048, 5632, 16),
    "5b": (32, 3072, 8192, 24),
    "30b": (48, 6144, 16384, 48),
}


def text_encoder(
    kind: str,
    max_length: int,
    source: str = "prompt",
    model=None,
    tokenizer: str = "",
    trainable: bool = False,
    dtype: str = "bfloat16",
) -> ml_collections.ConfigDict:
  """One entry of config.text.encoders; `model` (HF config keys) for a random one."""
  return ml_collections.ConfigDict(
      dict(
          kind=kind,
          path="",
          model=ml_collections.ConfigDict(model or {}),
          tokenizer=tokenizer,
          max_length=max_length,
          source=source,
          trainable=trainable,
          dtype=dtype,
      )
  )


def tiny_text_encoders(width: int = 64, trainable: bool = True) -> dict:
  """Random tiny UL2-, MetaCLIP- and ByT5-shaped encoders on ByT5's byte tokenizer
  (384 ids, no files): the default of the CPU configs and the tests."""
  t5 = dict(
      model_type="t5",
      vocab_size=384,
      d_model=width,
      d_kv=width // 4,
      d_ff=2 * width,
      num_layers=2,
      num_heads=4,
      feed_forward_proj="gated-gelu",
  )
  clip = dict(
      vocab_size=384,
      hidden_size=width,
      intermediate_size=2 * width,
      num_hidden_layers=2,
      num_attention_heads=4,
      max_position_embeddings=96,
      eos_token_id=1,
  )  # ByT5's </s>: CLIP pools at the end-of-sequence token
  make = functools.partial(text_encoder, tokenizer="byte", trainable=trainable, dtype="float32")
  return dict(
      ul2=make("t5", 96, model=t5),
      metaclip=make("clip", 96, model=clip),
      byt5=make("t5", 32, source="visual_text", model=t5),
  )


# The paper's encoders as Hugging Face config keys (what each `path` should hold):
# the shapes `mgjax.aot` compiles when no weights are given. Sources: google/ul2,
# facebook/metaclip-h14-fullcc2.5b's text_config (positions grown to 256, the
# long-prompt MetaCLIP), google/byt5-small; only the encoder halves are built.
PAPER_TEXT_ARCHITECTURES = {
    "ul2": dict(
        model_type="t5",
        vocab_size=32128,
        d_model=4096,
        d_kv=256,
        d_ff=16384,
        num_layers=32,
        num_heads=16,
        feed_forward_proj="gated-silu",
    ),
    "metaclip": dict(
        vocab_size=49408,
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=24,
        num_attention_heads=16,
        max_position_embeddings=256,
        hidden_act="quick_gelu",
    ),
    "byt5": dict(
        model_type="t5",
        vocab_size=384,
        d_model=1472,
        d_kv=64,
        d_ff=3584,
        num_layers=12,
        num_heads=6,
        feed_forward_proj="gated-gelu",
    ),
}


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
  if arg not in SIZES:
    raise ValueError(
        f"Unknown t2v size {arg!r}; use experiments/t2v.py:<size> with "
        f"size one of {', '.join(SIZES)}."
    )
  config = configs.base_config()
  config.task = "t2v"

  num_layers, embed_dim, mlp_dim, num_heads = TRANSFORMER_SHAPES[arg]
  config.model = ml_collections.ConfigDict(
      dict(
          num_layers=num_layers,
          embed_dim=embed_dim,
          mlp_dim=mlp_dim,
          num_heads=num_heads,
          patch_size=(1, 2, 2),  # (T, H, W) latent patch of the 3D patchify
          latent_channels=16,  # TAE latent channels (model input and output)
          max_frames=32,  # positional table sizes, in patches
          max_height=64,
          max_width=64,
          modulation="shared",  # "shared" (adaLN-single) | "per_block" (adaLN-Zero)
          qk_norm=True,
          attention_implementation="auto",  # mgjax/kernels/attention: xla|cudnn|pallas_gpu|pallas_tpu
          scan_layers=True,
          remat_policy="full",  # see mgjax.models.dit_blocks.REMAT_POLICIES
          dtype="bfloat16",
          param_dtype="float32",
      )
  )

  config.flow = ml_collections.ConfigDict(
      dict(
          sigma_min=1e-5,  # X_t = t X1 + (1 - (1 - sigma_min) t) X0
          t_mean=0.0,  # t ~ logit-normal(t_mean, t_std)
          t_std=1.0,
          text_drop_prob=0.1,  # drop text for classifier-free guidance
          sample_steps=50,
          schedule="linear_quadratic",
          emulated_linear_steps=250,  # the linear schedule the 50 steps mimic
          cfg_scale=7.5,
      )
  )

  # The frozen text encoders (mgjax/text/conditioning.py documents the keys). Point
  # each path at a Hugging Face directory (config.json, weights, tokenizer), e.g.
  # --config.text.encoders.ul2.path=/ckpt/ul2. `tiny` uses random tiny encoders.
  config.text = ml_collections.ConfigDict(
      dict(
          encoders=ml_collections.ConfigDict(
              dict(
                  ul2=text_encoder("t5", max_length=256),
                  metaclip=text_encoder("clip", max_length=256),
                  byt5=text_encoder("t5", max_length=128, source="visual_text"),
              )
          )
      )
  )

  # The TAE whose latents the DiT models. `workdir` holds a trained TAE (default
  # <workdir>/tae); with `train_config` set the trainer first trains that TAE there
  # for `train_steps` steps (0: the TAE config's own number), on the same data.
  config.tae = ml_collections.ConfigDict(dict(workdir="", train_config="", train_steps=0))

  # Sources and pipeline knobs: mgjax/configs.py `data_config`.
  config.data = configs.data_config(
      name="manifest",
      # One bucket per batch: (name, frames, height, width, batch size). A clip goes
      # to the bucket nearest its aspect ratio and duration (mgjax/data/buckets.py);
      # 1-frame buckets take the still images.
      buckets=(
          ("image_1x1", 1, 256, 256, 64),
          ("image_16x9", 1, 256, 448, 32),
          ("video_1x1", 128, 256, 256, 4),
          ("video_16x9", 128, 256, 448, 2),
      ),
      image_fraction=0.1,  # share of steps on image buckets (text-to-image)
      # Precomputed latents (mgjax/data/latent_shards.py): made by
      # `python -m mgjax.precompute`, or in <workdir>/latents when empty.
      latents_dir="",
      shard_size=256,  # examples per ArrayRecord shard
      # Also store the outputs of the frozen text encoders that load weights from a
      # path (float32 [L, D] per encoder and example: large for UL2), so training
      # skips them.
      precompute_text=False,
      # True: encode every batch with the TAE instead (random clips each epoch).
      encode_on_the_fly=False,
      random_clip_start=True,  # on the fly: clips start anywhere in the video
      stats_examples=1024,  # on the fly: examples per bucket for the latent statistics
  )

  config.eval = ml_collections.ConfigDict(
      dict(
          num_prompts_per_bucket=8,  # held-out captions (split "eval") sampled per bucket
          num_steps=50,
          schedule="linear_quadratic",
          method="euler",
          cfg_scale=7.5,
          seed=0,
          num_videos_to_write=8,
      )
  )

  # TAE decoding of sampled latents: clips longer than tile_frames are decoded in
  # overlapping tiles (in pixel frames) and blended.
  config.sample = ml_collections.ConfigDict(dict(tile_frames=32, tile_overlap=16))

  config.optimizer.update(learning_rate=1e-4, warmup_steps=1000, weight_decay=0.1)
  # Batch sizes are per bucket (data.buckets); train.batch_size is unused here.
  config.train.update(
      num_steps=100_000, batch_size=0, eval_every=5000, checkpoint_every=1000, ema_decay=0.9999
  )

  if arg == "tiny":
    config.model.update(
        max_frames=8, max_height=16, max_width=16, remat_policy="none", dtype="float32"
    )
    config.text.encoders.update(tiny_text_encoders())
    config.data.buckets = (("image", 1, 64, 64, 32), ("video", 32, 64, 64, 8))
    config.optimizer.update(learning_rate=1e-3, warmup_steps=100, weight_decay=0.0)
    config.train.update(
        num_steps=2000, log_every=100, eval_every=0, checkpoint_every=500, ema_decay=0.99
    )
  else:
    # Read only by weight-free tools (mgjax.aot); training and precompute need paths.
    config.text.architectures = ml_collections.ConfigDict(PAPER_TEXT_ARCHITECTURES)
    if arg in ("1b", "5b"):
      config.model.update(remat_policy="save_dots")
  return config
