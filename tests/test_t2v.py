"""The text-to-video task end to end on tiny models: train, evaluate, sample, inspect (and
the inspection notebook), bad input."""

import base64
import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from PIL import Image

from experiments import t2v as t2v_config
from experiments import upsampler as upsampler_config
from mgjax import inspect as inspect_lib
from mgjax import recipe as recipe_lib
from mgjax import runs
from mgjax import sample as sample_lib
from mgjax import train as train_lib
from mgjax.data import degrade
from mgjax.data.latent_shards import LatentShards
from mgjax.data.records import Records, read_manifest
from mgjax.data.video import ImageDecodeError, MediaDecodeError, probe, write_video
from mgjax.eval import metrics
from mgjax.eval import shapes as shapes_eval
from mgjax.parallel import mesh as mesh_lib
from mgjax.preemption import StopRequested
from mgjax.tasks.codecs import TAECodec
from mgjax.tasks.outputs import SampleRequest
from mgjax.tasks.pt2v import fit_square
from mgjax.tasks.t2v import T2VTask
from mgjax.text.hf_import import load_clip_text
from tests.devices import on_one_device
from tests.test_text_conditioning import save_tiny_hf_encoders
from tests.test_train import tiny_config as tiny_tae_config

NUM_FRAMES, SIZE = 16, 32


def tiny_t2v_config(tae_workdir, num_steps, clip_path=""):
  config = t2v_config.get_config("tiny")
  config.model.update(num_layers=2, embed_dim=32, mlp_dim=64, num_heads=2)
  config.text.encoders = t2v_config.tiny_text_encoders(width=16)
  config.text.encoders.metaclip.trainable = False  # one frozen encoder, in state.frozen
  if clip_path:  # ... imported from a Hugging Face directory
    config.text.encoders.metaclip.update(path=clip_path, model=ml_collections.ConfigDict())
  config.tae.workdir = tae_workdir
  config.data.update(
      name="shapes",
      dir=os.path.join(os.path.dirname(tae_workdir), "shapes"),
      buckets=(("image", 1, SIZE, SIZE, 8), ("video", NUM_FRAMES, SIZE, SIZE, 8)),
  )
  config.data.shapes.update(
      num_videos=24, num_frames=NUM_FRAMES, height=SIZE, width=SIZE, num_images=8
  )  # the set the TAE trained on
  config.eval.update(num_prompts_per_bucket=2, num_steps=2, num_videos_to_write=1)
  config.train.update(num_steps=num_steps, log_every=1, checkpoint_every=num_steps)
  config.optimizer.warmup_steps = 1
  return config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A tiny TAE (2 steps) and a tiny DiT (4 steps) on 24 shapes clips and 8 stills."""
  root = str(tmp_path_factory.mktemp("t2v"))
  tae_workdir = os.path.join(root, "tae")
  tae = tiny_tae_config(2, levels=4)
  tae.data.update(dir=os.path.join(root, "shapes"), image_fraction=0.0)
  tae.data.shapes.update(num_images=8)
  tae.train.eval_every = -1  # nothing here reads the TAE's own evaluation
  train_lib.train(tae, tae_workdir)
  workdir = os.path.join(root, "dit")
  clip_path = save_tiny_hf_encoders(os.path.join(root, "hf"))[0]["clip"]
  eval_metrics = train_lib.train(tiny_t2v_config(tae_workdir, 4, clip_path), workdir)
  return workdir, eval_metrics


def test_training_logs_metrics_and_evaluates_prompt_following(trained):
  workdir, eval_metrics = trained
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  train_rows = [r for r in rows if "loss" in r]
  assert [r["step"] for r in train_rows] == [1, 2, 3, 4]
  for row in train_rows:
    assert np.isfinite(row["loss"]) and row["loss"] > 0
    assert row["grad_norm"] > 0 and row["tokens_per_second"] > 0
  assert os.listdir(os.path.join(workdir, "tensorboard"))
  assert any("eval/shapes_score" in r for r in rows)
  # The scores are the checker's readings of what was generated: one row per held-out
  # prompt (at most 2 per bucket), aggregated per attribute, motion on videos only.
  samples = os.path.join(workdir, "samples", "step_4")
  with open(os.path.join(samples, "shapes_checker.jsonl")) as f:
    details = [json.loads(line) for line in f]
  buckets = [d["bucket"] for d in details]
  assert buckets == sorted(buckets) and 1 <= buckets.count("image") <= 2
  assert buckets.count("video") == 2
  assert all("motion" not in d["correct"] for d in details if d["bucket"] == "image")
  checks = [(a, ok) for d in details for a, ok in d["correct"].items()]
  for attribute in ("color", "shape", "motion"):
    mine = [ok for a, ok in checks if a == attribute]
    assert eval_metrics[f"shapes_{attribute}"] == pytest.approx(np.mean(mine)), attribute
  assert eval_metrics["shapes_score"] == pytest.approx(np.mean([ok for _, ok in checks]))
  assert eval_metrics["shapes_color_motion"] == pytest.approx(
      np.mean([ok for a, ok in checks if a in ("color", "motion")])
  )
  # ... of the very image written (PNG: lossless), read again from the file.
  image = np.asarray(Image.open(os.path.join(samples, "image_00.png")))[None]  # [1, H, W, 3]
  reread = shapes_eval.score([image], [details[0]["prompt"]])["details"][0]
  assert reread["read"] == details[0]["read"] and reread["correct"] == details[0]["correct"]
  info = probe(os.path.join(samples, "video_00.mp4"))
  assert (info.num_frames, info.height, info.width) == (NUM_FRAMES, SIZE, SIZE)
  with open(os.path.join(samples, "video_prompts.txt")) as f:
    assert all(line.startswith("FPS-16 ") for line in f.read().splitlines())


def test_latents_are_precomputed_into_shards_with_their_statistics(trained):
  workdir, _ = trained
  latents = os.path.join(workdir, "latents")
  assert {"fingerprint.json", "stats.json", "train"} <= set(os.listdir(latents))
  video = LatentShards(latents, "train", "video")
  shapes_dir = os.path.join(os.path.dirname(workdir), "shapes")
  train_videos = read_manifest(os.path.join(shapes_dir, "manifest.jsonl"), "train").records
  assert len(video) == len(train_videos) > 12
  assert len(LatentShards(latents, "train", "image")) == len(
      read_manifest(os.path.join(shapes_dir, "images.jsonl"), "train").records
  )
  assert video[3]["latent"].shape == (2, 4, 4, 16)  # 16 frames, 32 px -> 8x in T, H, W
  assert all(video[i]["caption"].startswith("FPS-16 ") for i in range(len(video)))
  with open(os.path.join(latents, "stats.json")) as f:
    stats = json.load(f)
  assert len(stats["mean"]) == 16 and min(stats["std"]) > 0
  everything = np.concatenate(
      [
          shards[i]["latent"].reshape(-1, 16)
          for bucket in ("video", "image")
          for shards in [LatentShards(latents, "train", bucket)]
          for i in range(len(shards))
      ]
  )
  np.testing.assert_allclose(stats["mean"], everything.mean(0), rtol=1e-4, atol=1e-5)


def test_a_moved_tae_keeps_its_latents(trained, tmp_path):
  """The latents' fingerprint is what made them (the TAE's config and weights), not
  where the TAE lives: a copied TAE run is the same codec, a retrained one is not."""
  workdir, _ = trained
  tae = os.path.join(os.path.dirname(workdir), "tae")
  moved = str(tmp_path / "elsewhere" / "tae")
  shutil.copytree(tae, moved)
  codec = TAECodec.from_workdir(tae)
  fingerprint = codec.fingerprint()
  assert fingerprint["step"] == runs.latest_step(tae) == 2
  assert TAECodec.from_workdir(tae).params is codec.params  # read once per process
  assert TAECodec.from_workdir(moved).fingerprint() == fingerprint
  assert tae not in json.dumps(fingerprint) and "elsewhere" not in json.dumps(fingerprint)
  with open(os.path.join(workdir, "latents", "fingerprint.json")) as f:
    assert json.load(f)["tae"] == fingerprint  # so a run pointed at the copy reuses them
  retrained = jax.tree.map(lambda p: p + 1e-3, codec.params)  # the same run, other weights
  other = TAECodec(codec.config, retrained, codec.step).fingerprint()
  assert other["weights_sha256"] != fingerprint["weights_sha256"]


@on_one_device()  # the same numbers three ways; the fixture's run is the sharded one
def test_shards_on_the_fly_encoding_and_precomputed_text_give_the_same_losses(trained, tmp_path):
  """The same clips (each from its start, as precompute takes it) through latent
  shards, through the TAE on every batch, and through shards that also hold the
  frozen imported CLIP encoder's outputs: the same losses."""
  workdir, _ = trained
  root = os.path.dirname(workdir)
  losses = {}
  for name, data in (
      ("shards", {}),
      ("on_the_fly", dict(encode_on_the_fly=True)),
      ("text", dict(precompute_text=True)),
  ):
    config = tiny_t2v_config(os.path.join(root, "tae"), 2, os.path.join(root, "hf", "clip"))
    config.data.update(random_clip_start=False, stats_examples=1000, **data)
    # One bucket, one train step to compile; the stills then fit none (skipped).
    config.data.update(buckets=(("video", NUM_FRAMES, SIZE, SIZE, 8),), max_skip_fraction=0.5)
    config.eval.num_prompts_per_bucket = 0
    train_lib.train(config, str(tmp_path / name))
    with open(tmp_path / name / "metrics.jsonl") as f:
      losses[name] = [r["loss"] for r in map(json.loads, f) if "loss" in r]
  assert len(losses["shards"]) == 2
  np.testing.assert_allclose(losses["on_the_fly"], losses["shards"], rtol=2e-4)
  np.testing.assert_allclose(losses["text"], losses["shards"], rtol=1e-4)
  example = LatentShards(str(tmp_path / "text" / "latents"), "train", "video")[0]
  assert example["metaclip_emb"].shape[-1:] == (16,) and example["metaclip_mask"].dtype == bool
  assert "ul2_emb" not in example  # trainable: computed in the step
  assert (
      "metaclip_emb" not in LatentShards(str(tmp_path / "shards" / "latents"), "train", "video")[0]
  )


def test_precompute_command_splits_work_across_processes_and_resumes(trained, tmp_path):
  workdir, _ = trained
  root = os.path.dirname(workdir)
  out = str(tmp_path / "latents")
  command = [
      sys.executable,
      "-m",
      "mgjax.precompute",
      "--config=experiments/t2v.py:tiny",
      f"--config.tae.workdir={root}/tae",
      "--config.data.name=manifest",
      f"--config.data.dir={root}/shapes",
      "--config.data.shard_size=8",
      "--config.data.buckets=(('image',1,32,32,8),('video',16,32,32,8))",
      f"--out={out}",
      "--splits=train",
      "--process_count=2",
  ]
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=os.getcwd())
  workers = [
      subprocess.Popen(
          command + [f"--process_index={i}"],
          env=env,
          stdout=subprocess.PIPE,
          stderr=subprocess.STDOUT,
          text=True,
      )
      for i in range(2)
  ]
  for worker in workers:
    output = worker.communicate(timeout=600)[0]
    assert worker.returncode == 0, output[-3000:]
  ours = LatentShards(out, "train", "video")
  theirs = LatentShards(os.path.join(workdir, "latents"), "train", "video")
  assert len(ours) == len(theirs) > 16  # 3 shards of 8: process 0 wrote 0 and 2, 1 wrote 1
  for i in (0, 9, len(ours) - 1):
    np.testing.assert_allclose(ours[i]["latent"], theirs[i]["latent"], rtol=1e-5, atol=1e-5)
    assert ours[i]["caption"] == theirs[i]["caption"]
  # Killed before shard 1 was done: a rerun redoes only that shard.
  video_dir = os.path.join(out, "train", "video")
  os.remove(os.path.join(video_dir, "shard-00001.json"))
  before = {f: os.path.getmtime(os.path.join(video_dir, f)) for f in os.listdir(video_dir)}
  done = subprocess.run(
      command[:-1] + ["--process_count=1"], env=env, capture_output=True, text=True, timeout=600
  )
  assert done.returncode == 0, done.stderr[-3000:]
  after = {f: os.path.getmtime(os.path.join(video_dir, f)) for f in os.listdir(video_dir)}
  changed = {f for f in after if after[f] != before.get(f)}
  assert changed == {"shard-00001.json", "shard-00001.array_record"}
  assert len(LatentShards(out, "train", "video")) == len(theirs)


def test_sample_cli_writes_videos_and_contact_sheet(trained, tmp_path):
  workdir, _ = trained
  prompts_file = tmp_path / "prompts.txt"
  long_prompt = " ".join(["a red circle moves to the left on a striped background"] * 20)
  prompts_file.write_text(f"\n  \na blue square moves up\n\n{long_prompt}\n")
  prompts = sample_lib.read_prompts(["a green triangle is still"], str(prompts_file))
  assert len(prompts) == 3  # blank lines skipped
  out = tmp_path / "out"
  request = SampleRequest(prompts, num_steps=3, schedule="linear", cfg_scale=2.0, batch_size=2)
  paths = sample_lib.sample(workdir, request, str(out))
  assert [os.path.splitext(p)[1] for p in paths] == [".mp4"] * 3
  for path in paths:
    info = probe(path)
    assert (info.num_frames, info.height, info.width) == (NUM_FRAMES, SIZE, SIZE)
  sheet = np.asarray(Image.open(out / "contact_sheet.png"))
  assert sheet.shape == (3 * SIZE, 8 * SIZE, 3)
  tagged = (out / "prompts.txt").read_text().splitlines()
  assert tagged[0] == "FPS-16 a green triangle is still"


def test_one_frame_samples_an_image(trained, tmp_path):
  workdir, _ = trained
  request = SampleRequest(
      ["a yellow circle"], num_steps=2, num_frames=1, height=SIZE, width=2 * SIZE
  )
  paths = sample_lib.sample(workdir, request, str(tmp_path))
  assert paths[0].endswith(".png")
  image = np.asarray(Image.open(paths[0]))
  assert image.shape == (SIZE, 2 * SIZE, 3)
  assert (tmp_path / "prompts.txt").read_text() == "a yellow circle\n"  # no FPS tag


def test_sampling_restores_the_weights_alone_as_the_whole_state_holds_them(trained):
  workdir, _ = trained
  _, _, state = train_lib.restore_train_state(workdir)
  _, _, params, frozen = runs.restore_weights(workdir)
  assert state.ema_params  # the tiny config keeps an EMA: sampling takes it, not params
  for restored, whole in ((params, state.ema_params), (frozen, state.frozen)):
    assert jax.tree.structure(restored) == jax.tree.structure(whole)
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(whole)):
      assert a.sharding == b.sharding
      np.testing.assert_array_equal(a, b)


def test_sampling_is_deterministic_for_a_seed(trained):
  workdir, _ = trained
  _, task, state = train_lib.restore_train_state(workdir)
  kwargs = dict(
      num_frames=NUM_FRAMES,
      height=SIZE,
      width=SIZE,
      num_steps=2,
      schedule="linear_quadratic",
      cfg_scale=3.0,
  )
  prompts = ["FPS-16 a red square moves down"]
  first = task.generate_videos(state.eval_params(), state.frozen, prompts, seed=1, **kwargs)
  again = task.generate_videos(state.eval_params(), state.frozen, prompts, seed=1, **kwargs)
  other = task.generate_videos(state.eval_params(), state.frozen, prompts, seed=2, **kwargs)
  np.testing.assert_array_equal(first, again)
  assert np.abs(first.astype(int) - other.astype(int)).mean() > 0


def test_bad_prompts_and_sizes_are_clear_errors(trained, tmp_path):
  workdir, _ = trained
  with pytest.raises(ValueError, match="Prompt 2 is empty"):
    sample_lib.read_prompts(["a red circle", "   "], None)
  empty_file = tmp_path / "blank.txt"
  empty_file.write_text("\n \n")
  assert sample_lib.read_prompts(None, str(empty_file)) == []
  with pytest.raises(ValueError, match="No prompts"):
    sample_lib.sample(workdir, SampleRequest([]), str(tmp_path))
  with pytest.raises(ValueError, match="does not exist"):
    sample_lib.read_prompts(None, str(tmp_path / "missing.txt"))
  with pytest.raises(ValueError, match="multiples of 16"):
    sample_lib.sample(
        workdir, SampleRequest(["a red circle"], num_steps=1, height=40, width=SIZE), str(tmp_path)
    )


def test_cli_reports_bad_input_in_one_line(trained):
  workdir, _ = trained
  result = subprocess.run(
      [
          sys.executable,
          "-m",
          "mgjax.sample",
          f"--workdir={workdir}",
          "--prompt=a red circle",
          "--height=40",
          "--num_steps=1",
      ],
      capture_output=True,
      text=True,
      timeout=300,
      env=dict(os.environ, JAX_PLATFORMS="cpu"),
  )
  assert result.returncode == 2
  assert (
      result.stderr.strip()
      .splitlines()[-2]
      .startswith("mgjax.sample: Height and width must be multiples of 16")
  )
  assert "--traceback" in result.stderr.strip().splitlines()[-1]
  assert "Traceback" not in result.stderr


def test_pretrained_frozen_encoder_is_imported_and_stays_frozen(trained):
  workdir, _ = trained
  config, _, state = train_lib.restore_train_state(workdir)
  clip = config.text.encoders.metaclip
  _, imported = load_clip_text(clip.path, max_length=clip.max_length)
  trained_leaves = jax.tree.leaves(state.frozen["text"]["metaclip"])
  assert len(trained_leaves) == len(jax.tree.leaves(imported)) > 0
  for a, b in zip(trained_leaves, jax.tree.leaves(imported)):
    np.testing.assert_array_equal(np.asarray(a), b)  # after 4 steps: still the import
  assert "metaclip" not in state.params["text"] and "ul2" in state.params["text"]


def test_config_mismatches_are_rejected(tmp_path, trained):
  workdir, _ = trained
  config = tiny_t2v_config(os.path.join(os.path.dirname(workdir), "tae"), 1)
  config.data.buckets = (("video", NUM_FRAMES, SIZE, SIZE, 6),)
  with pytest.raises(ValueError, match="multiple of 8"):  # 8 fake devices
    train_lib.train(config, str(tmp_path / "c"))
  config = tiny_t2v_config(str(tmp_path / "tae"), 1)
  config.text.encoders.ul2.kind = "bert"
  with pytest.raises(ValueError, match="text.encoders.ul2.kind"):
    train_lib.train(config, str(tmp_path / "a"))
  config = tiny_t2v_config(str(tmp_path / "tae"), 1)
  with pytest.raises(FileNotFoundError, match="No trained TAE"):
    train_lib.train(config, str(tmp_path / "b"))


def test_manifest_without_eval_split_evaluates_nothing(trained, monkeypatch):
  workdir, _ = trained
  _, task, state = train_lib.restore_train_state(workdir)
  from mgjax.data import sources

  read = sources.read_records
  monkeypatch.setattr(
      sources,
      "read_records",
      lambda data, workdir, split: (Records([]) if split == "eval" else read(data, workdir, split)),
  )
  assert task.evaluate(state.eval_params(), state.frozen, 0) == {}


@pytest.mark.parametrize(
    "mesh, sequence_parallel, message",
    [
        (dict(tensor=4), False, r"tensor=4 does not divide model.num_heads=2"),
        (dict(context=3), False, r"context = 3 do not divide the 4 tokens of bucket 'image'"),
        (dict(context=4, tensor=2), True, r"tensor \(sequence_parallel\) = 8 do not divide the 4"),
    ],
)
def test_mesh_that_does_not_divide_the_model_is_rejected(
    trained, tmp_path, mesh, sequence_parallel, message
):
  workdir, _ = trained
  config = tiny_t2v_config(os.path.join(os.path.dirname(workdir), "tae"), 1)
  config.mesh.update(dict(fsdp=1, **mesh))
  config.parallel.sequence_parallel = sequence_parallel
  devices = jax.devices()[: int(np.prod(list(mesh.values())))]
  with pytest.raises(ValueError, match=message):
    T2VTask(config, str(tmp_path)).check_mesh(mesh_lib.make_mesh(config.mesh.to_dict(), devices))


def test_inspect_reads_a_run_its_parameters_metrics_and_samples(trained, tmp_path):
  workdir, _ = trained
  run = inspect_lib.open_run(workdir)
  assert (run.steps, run.step, run.config.task) == ([4], 4, "t2v")
  state = run.state
  table = run.param_table()
  assert table.total == train_lib.count_params(state.params) > 0
  assert len(table.rows) == len(jax.tree.leaves(state.params))
  row = next(r for r in table.rows if r.path.startswith("dit/"))
  leaf = state.params["dit"]
  for name in row.path.split("/")[1:]:
    leaf = leaf[name]
  assert (row.shape, row.dtype, row.count) == (leaf.shape, str(leaf.dtype), leaf.size)
  modules = run.param_table(depth=1)
  assert [r.path for r in modules.rows] == ["dit", "text"] and modules.total == table.total
  assert f"Total: {table.total:,} parameters" in str(table) and "<table>" in table._repr_html_()
  assert run.param_table("frozen").total == train_lib.count_params(state.frozen) > 0
  with pytest.raises(ValueError, match="pick one of"):
    run.param_table("opt_state")

  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  steps, losses = run.metrics()["loss"]
  assert steps.tolist() == [1, 2, 3, 4]
  np.testing.assert_allclose(losses, [r["loss"] for r in rows if "loss" in r])
  assert "eval/shapes_score" in run.metrics()
  ax = run.plot_loss()
  assert ax.lines[0].get_xdata().tolist() == [1, 2, 3, 4]
  ax.figure.clf()
  with pytest.raises(ValueError, match=r"No \['psnr'\]"):
    run.plot_loss(("psnr",))
  # A run resumed from step 1 logs step 2 again; a kill cut the last line short.
  resumed = tmp_path / "metrics.jsonl"
  resumed.write_text(
      '{"step": 1, "loss": 3.0}\n{"step": 2, "loss": 2.0}\n'
      '{"step": 2, "loss": 1.5}\n{"step": 3, "lo'
  )
  steps, losses = inspect_lib.read_metrics(str(resumed))["loss"]
  assert (steps.tolist(), losses.tolist()) == ([1, 2], [3.0, 1.5])

  with pytest.raises(ValueError, match="needs a prompt"):
    run.sample_video()
  tae = inspect_lib.open_run(os.path.join(os.path.dirname(workdir), "tae"))
  clip = tae.task.eval_clips()[0]  # [T, H, W, 3]
  pair = tae.sample_video(path=str(tmp_path / "pair.mp4"))  # input | reconstruction
  assert pair.shape == clip.shape[:2] + (2 * clip.shape[2], 3) and pair.dtype == np.uint8
  np.testing.assert_array_equal(pair[:, :, : clip.shape[2]], clip)
  assert probe(str(tmp_path / "pair.mp4")).num_frames == len(clip)
  with pytest.raises(ValueError, match="takes no prompt"):
    tae.sample_video("a red circle")
  shown = inspect_lib.show_video(pair, fps=tae.fps).data
  assert shown.startswith("<video") and 'width="256"' in shown
  (tmp_path / "shown.mp4").write_bytes(base64.b64decode(shown.split("base64,")[1].split('"')[0]))
  assert probe(str(tmp_path / "shown.mp4")).width == pair.shape[2]


def test_inspect_names_the_workdir_and_the_fix(trained, tmp_path):
  workdir, _ = trained
  with pytest.raises(inspect_lib.NoRunError, match="does not exist: set it to the --workdir"):
    inspect_lib.open_run(str(tmp_path / "missing"))
  with pytest.raises(inspect_lib.NoRunError, match=f"{tmp_path} has no config.json"):
    inspect_lib.open_run(str(tmp_path))
  (tmp_path / "config.json").write_text(json.dumps({"task": "t2v"}))
  with pytest.raises(inspect_lib.NoRunError, match="no complete checkpoint in .*train longer"):
    inspect_lib.open_run(str(tmp_path))
  with pytest.raises(inspect_lib.NoRunError, match=r"step 3; complete ones: \[4\]"):
    inspect_lib.open_run(workdir, step=3)


def test_inspect_notebook_runs_headless_on_a_tiny_checkpoint(trained, tmp_path, monkeypatch):
  """The committed notebook, outputs cleared, executed in a fresh kernel of this Python
  on the tiny run, sampling 2 steps."""
  import nbformat
  from nbclient import NotebookClient

  workdir, _ = trained
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  notebook = nbformat.read(os.path.join(root, "notebooks", "inspect_checkpoint.ipynb"), 4)
  nbformat.validate(notebook)
  code = [c for c in notebook.cells if c.cell_type == "code"]
  assert not any(c.outputs or c.execution_count for c in code), "clear the notebook's outputs"
  parameters = next(
      i for i, c in enumerate(notebook.cells) if "parameters" in c.metadata.get("tags", [])
  )
  notebook.cells.insert(parameters + 1, nbformat.v4.new_code_cell("NUM_STEPS = 2"))
  # A kernel spec naming this interpreter, whatever other "python3" kernels exist.
  kernel_dir = tmp_path / "jupyter" / "kernels" / "mgjax-test"
  kernel_dir.mkdir(parents=True)
  (kernel_dir / "kernel.json").write_text(
      json.dumps(
          dict(
              argv=[sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
              display_name="mgjax test",
              language="python",
          )
      )
  )
  monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
  monkeypatch.setenv("MGJAX_WORKDIR", workdir)
  monkeypatch.setenv(
      "PYTHONPATH", os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
  )
  NotebookClient(
      notebook, timeout=300, kernel_name="mgjax-test", resources={"metadata": {"path": root}}
  ).execute()

  def outputs(snippet):  # the outputs of the code cell whose source holds snippet
    cell = next(c for c in notebook.cells if c.cell_type == "code" and snippet in c.source)
    text = "".join(
        o.get("text", "") + o.get("data", {}).get("text/plain", "") for o in cell.outputs
    )
    return text, {mime for o in cell.outputs for mime in o.get("data", {})}, cell.outputs

  text, _, _ = outputs("open_run(WORKDIR")
  assert "task 't2v', complete checkpoints [4], inspecting step 4" in text
  assert "task: t2v" in outputs("print(run.config)")[0]
  _, _, state = train_lib.restore_train_state(workdir)
  text, mimes, _ = outputs("table = run.param_table()")
  assert f"Total: {train_lib.count_params(state.params):,} parameters" in text
  assert "text/html" in mimes
  text, _, _ = outputs("depth=2)")
  assert f"Total: {train_lib.count_params(state.frozen):,} parameters" in text
  text, mimes, _ = outputs("run.plot_loss()")
  assert "logged steps: [1, 2, 3, 4]" in text and "image/png" in mimes
  text, mimes, cell_outputs = outputs("show_video(video")
  assert f"video ({NUM_FRAMES}, {SIZE}, {SIZE}, 3) uint8" in text
  html = next(o.data["text/html"] for o in cell_outputs if "text/html" in o.get("data", {}))
  (tmp_path / "inline.mp4").write_bytes(base64.b64decode(html.split("base64,")[1].split('"')[0]))
  info = probe(str(tmp_path / "inline.mp4"))
  assert (info.num_frames, info.height, info.width) == (NUM_FRAMES, SIZE, SIZE)


# ------------------------------------------------------------ the upsampler
# On this module's TAE and text-to-video run: 16 -> 32 px, 16 frames, one video at a
# time everywhere (evaluation, preview, files, chained), so one program serves all.


@pytest.fixture(scope="module")
def upsampler_run(trained):
  """An upsampler started from the text-to-video run (`train.init_from`), trained 2
  steps at learning rate 0 -- its weights stay the starting ones -- and evaluated."""
  workdir, _ = trained
  root = os.path.dirname(workdir)
  t2v = tiny_t2v_config(os.path.join(root, "tae"), 2, os.path.join(root, "hf", "clip"))
  config = upsampler_config.get_config("tiny")
  config.model.update(t2v.model.to_dict())  # same shapes: the weights carry over
  config.text = t2v.text
  config.tae.workdir = t2v.tae.workdir
  config.upsample.update(window=6, overlap=2)
  config.data.update(
      name="shapes",
      dir=t2v.data.dir,
      shapes=t2v.data.shapes,
      buckets=(("video", 6, SIZE, SIZE, 8),),
  )
  config.eval.update(num_clips=1, num_frames=NUM_FRAMES, num_steps=2, num_videos_to_write=1)
  config.optimizer.update(learning_rate=0.0, warmup_steps=1)
  config.train.update(num_steps=2, log_every=1, checkpoint_every=2, eval_every=2)
  config.train.init_from.workdir = workdir
  up_workdir = os.path.join(root, "upsampler")
  with on_one_device():  # the text-to-video fixture is the sharded run
    return up_workdir, train_lib.train(config, up_workdir)


def test_upsampler_evaluation_scores_against_bilinear_bicubic_and_the_tae(upsampler_run):
  up_workdir, results = upsampler_run
  for name in ("upsampler", "bilinear", "bicubic", "tae"):
    assert np.isfinite(results[f"psnr_{name}"]) and 0 < results[f"ssim_{name}"] <= 1
  assert results["seam_error"] > 0 and results["nonseam_error"] > 0
  # The baselines' figures are those of the held-out clips, degraded as configured.
  _, task, _, _ = runs.restore_weights(up_workdir)
  truth, captions = task.eval_clips()
  assert truth.shape == (1, NUM_FRAMES, SIZE, SIZE, 3) and captions[0].startswith("FPS-16 ")
  u = task.config.upsample
  lowres = [degrade.degrade(c, 2, u.degrade, task.config.eval.seed) for c in truth]
  bicubic = np.stack([degrade.resize_video(v, SIZE, SIZE, "bicubic") for v in lowres])
  assert results["psnr_bicubic"] == pytest.approx(float(metrics.psnr(bicubic, truth, 255.0).mean()))
  info = probe(os.path.join(up_workdir, "samples", "step_2", "clip_00.mp4"))
  assert (info.num_frames, info.height, info.width) == (NUM_FRAMES, SIZE, 3 * SIZE)
  # mgjax.inspect (and the notebook) shows the same comparison for the first clip.
  preview = inspect_lib.open_run(up_workdir).sample_video(num_steps=2)
  assert preview.shape == (NUM_FRAMES, SIZE, 3 * SIZE, 3)
  np.testing.assert_array_equal(preview[:, :, 2 * SIZE :], truth[0])


def test_upsampler_starts_as_the_text_to_video_model(trained, upsampler_run):
  """init_from copied the DiT and text weights, and the zero-initialised channels of
  the low-res video change nothing: the upsampler's velocity is the text-to-video
  model's, whatever the condition."""
  workdir, _ = trained
  up_workdir, _ = upsampler_run
  _, t2v_task, t2v_params, t2v_frozen = runs.restore_weights(workdir)
  _, up_task, up_params, up_frozen = runs.restore_weights(up_workdir)
  up_dit = dict(up_params["dit"])
  assert not np.any(np.asarray(up_dit.pop("concat_embed")["kernel"]))
  jax.tree.map(np.testing.assert_array_equal, up_dit, t2v_params["dit"])
  assert set(up_params["text"]) == set(t2v_params["text"])
  # A 4-step model's output is ~0 (zero-initialised output layer): give both the
  # same trained-like weights, keeping the upsampler's new channels at zero.
  rng = np.random.default_rng(0)
  noise = lambda a: a + 0.1 * rng.standard_normal(a.shape).astype(a.dtype)
  t2v_params = {**t2v_params, "dit": jax.tree.map(noise, t2v_params["dit"])}
  up_params = {
      **up_params,
      "dit": {**t2v_params["dit"], "concat_embed": up_params["dit"]["concat_embed"]},
  }
  x = jnp.asarray(rng.standard_normal((2, 6, 4, 4, 16)), jnp.float32)
  t = jnp.asarray([0.2, 0.7])
  tokens = {
      k: jnp.asarray(v) for k, v in t2v_task.text.tokenize(["FPS-16 a red circle", "x"]).items()
  }
  keep = {"text": jnp.asarray([True, False])}
  expected = jax.jit(t2v_task.velocity)(t2v_params, t2v_frozen, x, t, tokens, keep)
  assert np.abs(np.asarray(expected)).max() > 1e-3
  up_task.stats()  # host constants of the step: read before tracing it
  up_velocity = jax.jit(up_task.velocity)
  for scale in (1.0, 5.0):
    lowres = jnp.asarray(scale * rng.standard_normal(x.shape), jnp.float32)
    got = up_velocity(up_params, up_frozen, x, t, {**tokens, "lowres_latent": lowres}, keep)
    np.testing.assert_allclose(got, expected, atol=1e-5)


@on_one_device()  # the fixture's programs
def test_upsampler_samples_files_of_any_length_and_chains_after_text_to_video(
    trained, upsampler_run, tmp_path
):
  workdir, _ = trained
  up_workdir, _ = upsampler_run
  # 16 frames: windows of 6 starting at 0, 4, 8, 10.
  frames = np.random.default_rng(0).integers(0, 255, (NUM_FRAMES, 16, 16, 3), dtype=np.uint8)
  write_video(str(tmp_path / "small.mp4"), frames, fps=12)
  paths = sample_lib.sample(
      up_workdir,
      SampleRequest(inputs=[str(tmp_path / "small.mp4")], num_steps=2),
      str(tmp_path / "out"),
      task_name="upsample",
  )
  assert [os.path.basename(p) for p in paths] == ["small_x2.mp4"]
  info = probe(paths[0])
  assert (info.num_frames, info.height, info.width, round(info.fps)) == (NUM_FRAMES, 32, 32, 12)
  # Text -> video -> 2x: both written.
  request = SampleRequest(
      prompts=["a red circle moves up"], num_frames=NUM_FRAMES, height=16, width=16, num_steps=2
  )
  paths = sample_lib.sample(workdir, request, str(tmp_path / "chain"), upsampler=up_workdir)
  names = sorted(os.path.basename(p) for p in paths)
  assert names == ["000_a_red_circle_moves_up.mp4", "000_a_red_circle_moves_up_x2.mp4"]
  sizes = sorted((probe(p).num_frames, probe(p).height) for p in paths)
  assert sizes == [(NUM_FRAMES, 16), (NUM_FRAMES, 32)]


def test_upsampler_bad_input_is_named(trained, upsampler_run, tmp_path):
  workdir, _ = trained
  up_workdir, _ = upsampler_run
  odd = tmp_path / "odd.mp4"
  write_video(str(odd), np.zeros((3, 20, 20, 3), np.uint8), fps=8)
  with pytest.raises(ValueError, match=r"odd.*40x40, which is not a multiple of 16"):
    sample_lib.sample(up_workdir, SampleRequest(inputs=[str(odd)]), str(tmp_path / "o"))
  (tmp_path / "notes.mp4").write_text("not a video")
  with pytest.raises(MediaDecodeError):
    sample_lib.sample(
        up_workdir, SampleRequest(inputs=[str(tmp_path / "notes.mp4")]), str(tmp_path / "o")
    )
  with pytest.raises(ValueError, match="does not take videos to refine"):
    sample_lib.sample(workdir, SampleRequest(prompts=["a"]), str(tmp_path / "o"), upsampler=workdir)
  with pytest.raises(runs.NoRunError, match="Pass an upsampler run"):
    sample_lib.sample(
        workdir, SampleRequest(prompts=["a"]), str(tmp_path / "o"), upsampler=str(tmp_path)
    )
  with pytest.raises(ValueError, match="needs videos"):
    sample_lib.sample(up_workdir, SampleRequest(), str(tmp_path / "o"))


# ------------------------------------------------------------------ PT2V


@pytest.fixture(scope="module")
def pt2v_recipe(trained):
  """PT2V's recipe in one run (tests/configs/pt2v_tiny.py) from the text-to-video run:
  stage I (paired, tower frozen), stage II, then this run, stage III (cross-paired,
  tower trained), 2 steps each on the identity shapes and the text-to-video tests'
  TAE, and its evaluation beside the T2V and stage II runs, on one device. The first
  attempt is stopped (as by SIGTERM) after stage II's first step; the second resumes it."""
  from tests.configs import pt2v_tiny  # it imports this module's tiny config

  workdir, _ = trained
  root = os.path.dirname(workdir)
  spec = os.path.join(os.path.dirname(__file__), "configs", "pt2v_tiny.py")
  config = pt2v_tiny.get_config("stage3")
  config.tae.workdir = os.path.join(root, "tae")
  config.data.dir = os.path.join(root, "identity")
  config.train.init_from.workdir = workdir  # where the recipe starts
  config.train.recipe = tuple((name, f"{spec}:{name}") for name in ("stage1", "stage2"))
  config.train.eval_every = 0
  config.pt2v.baselines.update(t2v=workdir, paired="stage2")
  pt2v_dir = os.path.join(root, "pt2v")
  seen_step_1 = []

  def reached(self, step):  # stage I passes step 1, then stage II stops there
    seen_step_1.extend([step] if step == 1 else [])
    return len(seen_step_1) == 2 and step == 1

  with on_one_device():
    with pytest.MonkeyPatch.context() as stop:
      stop.setattr(train_lib.PreemptionWatch, "reached", reached)
      with pytest.raises(StopRequested, match="stage2 stage .* stopped at step 1 of 2"):
        train_lib.train(config, pt2v_dir)
    stage1 = os.path.join(pt2v_dir, "stage1", "checkpoints")
    untouched = {p: os.path.getmtime(os.path.join(stage1, p)) for p in os.listdir(stage1)}
    results = train_lib.train(config, pt2v_dir)
  assert {p: os.path.getmtime(os.path.join(stage1, p)) for p in os.listdir(stage1)} == untouched
  return pt2v_dir, results


def test_pt2v_recipe_runs_each_stage_from_the_one_before(trained, pt2v_recipe):
  pt2v_dir, results = pt2v_recipe
  stage = lambda name: os.path.join(pt2v_dir, name)  # noqa: E731
  for name, before in (("stage1", trained[0]), ("stage2", stage("stage1"))):
    config = runs.read_config(stage(name))
    assert config.train.init_from.workdir == before and config.task == "pt2v"
    assert runs.is_finished(stage(name), 2)
  _, _, t2v_params, _ = runs.restore_weights(trained[0])
  _, _, params1, frozen1 = runs.restore_weights(stage("stage1"))
  _, _, _, frozen2 = runs.restore_weights(stage("stage2"))
  _, task, params3, _ = runs.restore_weights(pt2v_dir)
  # The tower is frozen in stages I and II (carried over as it is), trained in III.
  assert "vision" in frozen1 and "vision" not in params1 and "vision" in params3
  jax.tree.map(np.testing.assert_array_equal, frozen1["vision"], frozen2["vision"])
  moved = jax.tree.leaves(
      jax.tree.map(lambda a, b: np.abs(a - b).max(), params3["vision"], frozen2["vision"])
  )
  assert max(moved) > 0
  # The reference's projection is new in stage I; the rest of the DiT came from T2V.
  assert "text_projection_reference" in params1["dit"]
  assert "text_projection_reference" not in t2v_params["dit"]
  assert task.config.pt2v.pairing == "cross" and task.vision_trainable
  # Evaluation: this run and both baselines, on the same held-out references.
  for prefix in ("", "t2v/", "paired/"):
    for key in (
        "identity_correct",
        "identity_best_frame",
        "identity_worst_frame",
        "identity_consistency",
        "prompt_color_motion",
    ):
      assert 0.0 <= results[prefix + key] <= 1.0
    assert results[prefix + "identity_best_frame"] >= results[prefix + "identity_worst_frame"]
    assert -1.0 <= results[prefix + "clip_worst_frame"] <= results[prefix + "clip_best_frame"] <= 1
  assert os.path.exists(os.path.join(pt2v_dir, "samples", "step_2", "reference_00.png"))


def test_pt2v_references_are_stored_cross_paired_with_the_latents(pt2v_recipe):
  pt2v_dir, _ = pt2v_recipe
  _, task, _, _ = runs.restore_weights(pt2v_dir)
  stored = LatentShards(task.latents_dir, "train", "video")[0]
  assert stored["reference"].dtype == np.uint8 and stored["reference"].shape == (16, 16, 3)
  manifest = os.path.join(task.config.data.dir, "manifest.jsonl")
  own = {r["video"]: r for r in read_manifest(manifest, "train").records}
  crossed = task.read_records("train")
  assert len(crossed.records) + task.num_alone == len(own) and task.num_alone > 0
  of_reference = {r["reference"]: r for r in own.values()}
  for r in crossed.records:  # another clip's reference, of the same subject
    assert r["reference"] != own[r["video"]]["reference"]
    assert of_reference[r["reference"]]["subject"] == r["subject"]


def test_pt2v_recipe_resumed_the_stage_it_stopped_in(pt2v_recipe):
  pt2v_dir, _ = pt2v_recipe
  with open(os.path.join(pt2v_dir, "stage2", "metrics.jsonl")) as f:
    steps = [json.loads(line)["step"] for line in f if '"loss"' in line]
  assert steps == [1, 2]  # step 1 before the stop, step 2 after it, each once
  assert runs.is_finished(os.path.join(pt2v_dir, "stage2"), 2) and runs.is_finished(pt2v_dir, 2)


@on_one_device()
def test_pt2v_samples_keep_the_reference_given_as_any_image(pt2v_recipe, tmp_path):
  pt2v_dir, _ = pt2v_recipe
  Image.fromarray(np.full((10, 30), 90, np.uint8)).save(tmp_path / "grey.png")
  rgba = np.zeros((20, 20, 4), np.uint8)
  rgba[5:15, 5:15] = (40, 75, 225, 255)
  Image.fromarray(rgba).save(tmp_path / "subject.png")
  prompts = ["a blue circle moves up", "a red square stays still"]
  references = [str(tmp_path / "grey.png"), str(tmp_path / "subject.png")]
  request = SampleRequest(prompts, references=references, num_steps=2)  # evaluation's program
  paths = sample_lib.sample(pt2v_dir, request, str(tmp_path / "out"), task_name="pt2v")
  assert [probe(p).num_frames for p in paths] == [NUM_FRAMES, NUM_FRAMES]
  # The reference conditions the model: the same prompt and noisy latent, another
  # reference, another velocity -- unless the reference is dropped (its CFG branch).
  run = inspect_lib.open_run(pt2v_dir)
  task, params, frozen = run.task, run.state.params, run.state.frozen
  (refs,) = task.request_conditions(request)
  tokens = {k: jnp.asarray(v) for k, v in task.text.tokenize(prompts[:1] * 2).items()}
  x = jax.random.normal(jax.random.key(0), (1, *task.latent_shape(NUM_FRAMES, SIZE, SIZE)))
  velocity = jax.jit(task.velocity)
  for kept in (True, False):
    keep = {"reference": jnp.full((2,), kept)}
    v = velocity(
        params, frozen, x.repeat(2, 0), jnp.full((2,), 0.5), {**tokens, "reference": refs}, keep
    )
    assert (np.asarray(v[0]) != np.asarray(v[1])).any() == kept  # the rows see references
  np.testing.assert_array_equal(
      refs[0], task.request_conditions(SampleRequest(prompts, references=references[:1]))[0][1]
  )
  (tmp_path / "broken.png").write_bytes(b"not an image")
  with pytest.MonkeyPatch.context() as patch:  # bad references fail before the restore
    patch.setattr(runs, "restore_weights", lambda *_: pytest.fail("restored"))
    with pytest.raises(ValueError, match="once for all 2 prompts, or once per prompt; got 3"):
      sample_lib.sample(
          pt2v_dir,
          SampleRequest(prompts, references=references + references[:1]),
          str(tmp_path / "x"),
      )
    with pytest.raises(Exception, match="broken.png"):
      sample_lib.sample(
          pt2v_dir,
          SampleRequest(prompts[:1], references=[str(tmp_path / "broken.png")]),
          str(tmp_path / "y"),
      )
  # The run's preview: a held-out subject's reference beside its video, no file needed.
  preview = run.sample_video(num_steps=2)
  assert preview.shape == (NUM_FRAMES, SIZE, 2 * SIZE, 3)
  _, held_out_references, _, _ = task.eval_cases()
  np.testing.assert_array_equal(preview[0, :, :SIZE], fit_square(held_out_references[0], SIZE))


# ------------------------------------------------------------------ Edit


@pytest.fixture(scope="module")
def edit_recipe(trained):
  """Movie Gen Edit's recipe in one run (tests/configs/edit_tiny.py) from the
  text-to-video run: stage I (single-frame edits with clips), then this run, stage III
  (pairs back-translated by the stage I run), 2 steps each on the shapes edit set and
  the text-to-video tests' TAE, evaluated beside SDEdit (the T2V run), on one device."""
  from tests.configs import edit_tiny  # it imports this module's tiny config

  workdir, _ = trained
  root = os.path.dirname(workdir)
  config = edit_tiny.get_config("stage3")
  config.tae.workdir = os.path.join(root, "tae")
  config.data.dir = os.path.join(root, "edit_shapes")
  config.train.init_from.workdir = workdir  # where the recipe starts
  spec = os.path.join(os.path.dirname(__file__), "configs", "edit_tiny.py")
  config.train.recipe = (("stage1", f"{spec}:stage1"),)
  config.train.eval_every = 0
  config.edit.backtranslate.run = "stage1"
  config.edit.baselines.sdedit = workdir
  edit_dir = os.path.join(root, "edit")
  with on_one_device():
    results = train_lib.train(config, edit_dir)
  return edit_dir, results


def test_edit_recipe_trains_stage3_on_pairs_the_stage_before_made(trained, edit_recipe):
  from mgjax.data import shapes_edit
  from mgjax.tasks import edit_conditions

  edit_dir, results = edit_recipe
  stage1 = os.path.join(edit_dir, "stage1")
  assert runs.read_config(stage1).train.init_from.workdir == trained[0]
  assert recipe_lib.init_from_workdir(runs.read_config(edit_dir), edit_dir) == stage1
  _, _, t2v_params, _ = runs.restore_weights(trained[0])
  _, task, params, _ = runs.restore_weights(edit_dir)
  for name in ("concat_embed", "task_embed", "task_tokens", "task_time"):  # new in stage I
    assert name in params["dit"] and name not in t2v_params["dit"]
  # Back-translation: stage I's edits of real training clips, each to be undone.
  data_dir = task.config.data.dir
  real = {r["video"]: r for r in read_manifest(os.path.join(data_dir, "real.jsonl")).records}
  pairs = read_manifest(os.path.join(edit_dir, "backtranslation", "manifest.jsonl")).records
  assert 1 <= len(pairs) <= 4
  for pair in pairs:
    assert pair["video"] in real and pair["caption"] != pair["forward"]
    info = probe(pair["source"])
    assert (info.num_frames, info.height, info.width) == (NUM_FRAMES, SIZE, SIZE)
    scene = shapes_edit.scene_from_dict(real[pair["video"]]["scene"])
    assert shapes_edit.scene_from_dict(pair["target_scene"]) == scene  # the target is real
    assert pair["task"] in edit_conditions.EDIT_KINDS
  stored = LatentShards(task.latents_dir, "train", "video")
  tasks = sorted(int(stored[i]["task"]) for i in range(len(stored)))
  assert len(stored) == len(real) + len(pairs)
  assert tasks.count(edit_conditions.task_id("t2v")) == len(real)
  # Evaluation: this run and SDEdit on the same held-out edits, scored per kind;
  # "main" is the mean over the five kinds the acceptance averages.
  for prefix in ("", "sdedit/"):
    kinds = [k for k in ("color", "background", "motion", "add", "remove")]
    for key in ("success", "preserved"):
      assert 0.0 <= results[f"{prefix}main/{key}"] <= 1.0
      assert results[f"{prefix}main/{key}"] == pytest.approx(
          np.mean([results[f"{prefix}{k}/{key}"] for k in kinds])
      )
  assert results["extend_kept_max_change"] == 0.0  # the kept latent frames, bit for bit
  assert results["i2v_tae_psnr"] > 10 and results["i2v_first_frame_psnr"] > 0
  assert results["extend_seam_ratio"] > 0
  samples = os.path.join(edit_dir, "samples", "step_2")
  assert {"edit_00.mp4", "sdedit_00.mp4", "i2v_00.mp4", "extend_00.mp4"} <= set(os.listdir(samples))


@on_one_device()  # the fixture's programs
def test_edit_samples_videos_images_and_extensions_of_any_size(edit_recipe, tmp_path):
  from mgjax.data import shapes

  edit_dir, _ = edit_recipe
  spec = shapes.sample_spec(np.random.default_rng(0), "lanes")
  # Longer than the model's window (9 latent frames of 8 at 16 fps), another size and rate.
  write_video(str(tmp_path / "long.mp4"), shapes.render_clip(spec, 100, 40, 56), fps=24)
  write_video(str(tmp_path / "short.mp4"), shapes.render_clip(spec, NUM_FRAMES, SIZE, SIZE), 16)
  Image.fromarray(shapes.render_clip(spec, 1, 50, 70)[0]).save(tmp_path / "first.png")
  out = str(tmp_path / "out")
  request = lambda **kw: SampleRequest(num_steps=2, **kw)  # noqa: E731
  (edited,) = sample_lib.sample(
      edit_dir,
      request(inputs=[str(tmp_path / "long.mp4")], instructions=["make the circle blue"]),
      out,
      task_name="edit",
  )
  info = probe(edited)
  assert (info.num_frames, info.height, info.width) == (66, SIZE, SIZE)  # 100 at 24 -> 16 fps
  # The other requests on one restore, so the image-to-video ones share a program.
  _, task, params, frozen = runs.restore_weights(edit_dir)
  prompt = "a red circle moves up on a plain background"
  image = str(tmp_path / "first.png")
  for given in (dict(first_frame=image), dict(first_frame=image, last_frame=image)):
    (sample,) = sample_lib.generate(task, params, frozen, request(prompts=[prompt], **given))
    assert sample.video.shape == (NUM_FRAMES, SIZE, SIZE, 3)
  extend = request(prompts=[prompt], extend=str(tmp_path / "short.mp4"), seconds=1.0)
  (extended,) = sample_lib.generate(task, params, frozen, extend)
  assert extended.name == "short_extended" and extended.video.shape[0] == 2 * NUM_FRAMES


def test_edit_bad_inputs_are_named_before_the_weights_are_read(trained, edit_recipe, tmp_path):
  edit_dir, _ = edit_recipe
  write_video(str(tmp_path / "ok.mp4"), np.zeros((NUM_FRAMES, SIZE, SIZE, 3), np.uint8), fps=16)
  (tmp_path / "broken.png").write_bytes(b"not an image")
  ok, out = str(tmp_path / "ok.mp4"), str(tmp_path / "out")
  cases = [
      (dict(inputs=[ok], instructions=["  "]), ValueError, "Instruction 1 is empty"),
      (dict(inputs=[ok]), ValueError, "need an instruction"),
      (dict(instructions=["make it red"]), ValueError, "pass --video"),
      (dict(prompts=["a"], first_frame=str(tmp_path / "broken.png")), ImageDecodeError, "broken"),
      (dict(prompts=["a"], extend=ok), ValueError, "--seconds"),
      (dict(extend=ok, seconds=1.0), ValueError, "--prompt"),
      (
          dict(inputs=[str(tmp_path / "missing.mp4")], instructions=["x"]),
          MediaDecodeError,
          "missing",
      ),
  ]
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(runs, "restore_weights", lambda *_: pytest.fail("restored"))
    for fields, error, message in cases:
      with pytest.raises(error, match=message):
        sample_lib.sample(edit_dir, SampleRequest(**fields), out)
    with pytest.raises(ValueError, match="--instruction is for edit runs .* a 't2v' run"):
      sample_lib.sample(trained[0], SampleRequest(["a"], instructions=["x"]), out)
  result = subprocess.run(
      [sys.executable, "-m", "mgjax.sample", f"--workdir={edit_dir}", "--instruction=make it red",
       f"--video={tmp_path / 'missing.mp4'}"],
      capture_output=True, text=True, timeout=300, env=dict(os.environ, JAX_PLATFORMS="cpu"),
  )  # fmt: skip
  assert result.returncode == 2 and "Traceback" not in result.stderr
  assert result.stderr.strip().splitlines()[-2].startswith("mgjax.sample: cannot read the video")
