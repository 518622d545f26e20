"""The text path: per-encoder tokens, visual text, truncation, null condition, pretrained
encoders from Hugging Face directories, and the precompute command."""

import os
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest
import torch
import transformers

from experiments import t2v as t2v_config
from mgjax.text import precompute as precompute_lib
from mgjax.text.conditioning import TextConditioner
from mgjax.text.prompts import visual_text

LONG_PROMPTS = os.path.join(os.path.dirname(__file__), "data", "long_prompts.txt")
BYTE_VOCAB = 384  # ByT5's tokenizer: 3 specials + 256 bytes + 125 extra ids


def tiny_section(trainable: bool = False) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(
      dict(encoders=t2v_config.tiny_text_encoders(width=16, trainable=trainable))
  )


def test_visual_text_is_the_quoted_spans():
  assert (
      visual_text('a sign that reads "OPEN" next to \u201cCAF\u00c9 24h\u201d')
      == "OPEN CAF\u00c9 24h"
  )
  assert visual_text("no quotes here") == ""
  assert visual_text('an empty "" quote') == ""


def test_tokens_have_fixed_shapes_and_byt5_reads_only_visual_text():
  conditioner = TextConditioner(tiny_section())
  prompts = ['FPS-16 a neon sign that says "HI"', "FPS-16 a red circle moves up"]
  tokens = conditioner.tokenize(prompts)
  assert tokens["ul2_ids"].shape == (2, 96) and tokens["byt5_ids"].shape == (2, 32)
  # ByT5 ids are bytes + 3, then </s> = 1: "HI" -> [75, 76, 1]; no quotes -> no tokens.
  np.testing.assert_array_equal(tokens["byt5_ids"][0, :3], [ord("H") + 3, ord("I") + 3, 1])
  assert tokens["byt5_mask"][0].sum() == 3 and not tokens["byt5_mask"][1].any()
  assert tokens["ul2_mask"][1].sum() == len(prompts[1].encode()) + 1
  assert conditioner.num_truncated == {"byt5": 0, "metaclip": 0, "ul2": 0}


def test_long_real_world_prompts_are_truncated_counted_and_reported():
  with open(LONG_PROMPTS, encoding="utf-8") as f:
    prompts = [line.strip() for line in f if line.strip()]
  conditioner = TextConditioner(tiny_section())
  tokens = conditioner.tokenize(prompts)
  lengths = [len(p.encode("utf-8")) + 1 for p in prompts]  # bytes + </s>
  expected = sum(n > 96 for n in lengths)
  assert 0 < expected < len(prompts)
  assert conditioner.num_truncated["ul2"] == conditioner.num_truncated["metaclip"] == expected
  # A truncated row keeps its end-of-sequence token, where CLIP pools from.
  for row, n in enumerate(lengths):
    if n > 96:
      assert tokens["metaclip_mask"][row].all() and tokens["metaclip_ids"][row, -1] == 1
  assert f"ul2: {expected} (max 96 tokens)" in conditioner.truncation_report()
  trainable, frozen = conditioner.init(jax.random.key(0))
  out = conditioner.embed(trainable, frozen, tokens)
  for name, (emb, mask) in out.items():
    assert emb.shape[:2] == mask.shape and np.isfinite(np.asarray(emb)).all(), name


def test_dropped_prompts_get_no_text_tokens():
  conditioner = TextConditioner(tiny_section())
  tokens = conditioner.tokenize(['a "sign"', 'a "sign"'])
  trainable, frozen = conditioner.init(jax.random.key(0))
  out = conditioner.embed(trainable, frozen, tokens, keep=np.array([True, False]))
  for name, (_, mask) in out.items():
    assert mask[0].any() and not mask[1].any(), name


def test_bad_encoder_entries_are_rejected_with_the_key():
  section = tiny_section()
  section.encoders.ul2.unknown_key = 1
  with pytest.raises(ValueError, match="unknown_key"):
    TextConditioner(section)
  section = tiny_section()
  section.encoders.metaclip.model = ml_collections.ConfigDict()
  with pytest.raises(ValueError, match="text.encoders.metaclip.path"):
    TextConditioner(section)
  section = tiny_section()
  section.encoders.ul2.update(path="/no/such/dir", tokenizer="")
  with pytest.raises(FileNotFoundError, match="/no/such/dir"):
    TextConditioner(section)
  section = tiny_section()
  section.encoders.ul2.tokenizer = "bytes"
  with pytest.raises(ValueError, match="text.encoders.ul2.tokenizer is 'bytes'"):
    TextConditioner(section)


def test_words_tokenizer_gives_one_id_per_word_and_pools_at_the_end():
  section = tiny_section()
  section.encoders.ul2.update(tokenizer="words", max_length=8)
  section.encoders.ul2.model.vocab_size = 2048
  tokens = TextConditioner(section).tokenize(["FPS-16 a Red circle, moves up", "a red circle"])
  ids, mask = tokens["ul2_ids"], tokens["ul2_mask"]
  # fps - 16 a red circle , moves up </s>: 10 tokens, truncated to 8 keeping </s> (id 1).
  assert mask[0].all() and ids[0, -1] == 1 and mask[1].sum() == 4 and ids[1, 3] == 1
  np.testing.assert_array_equal(ids[0, 3:6], ids[1, :3])  # case does not matter
  assert len(set(ids[0, :7])) == 7 and ids.min() >= 0 and ids.max() < 2048


def test_no_two_words_of_the_shapes_captions_share_an_id_in_the_demo():
  """The demo's prompt encoders hash words into 2,048 ids (experiments/t2v_shapes.py)."""
  import re

  from mgjax.data import shapes
  from mgjax.text.tokenizers import HashedWordTokenizer

  texts = (
      shapes.CLIP_TEMPLATES
      + shapes.IMAGE_TEMPLATES
      + ("FPS-16",)
      + tuple(shapes.COLORS)
      + shapes.SHAPES
      + shapes.BACKGROUNDS
      + sum(shapes.MOTION_PHRASES.values(), ())
  )
  words = {
      w for text in texts for w in re.findall(r"\w+|[^\w\s]", re.sub(r"{\w+}", "", text.lower()))
  }
  assert {"left", "right", "up", "down", "red", "cyan", "fps"} <= words
  tokenizer = HashedWordTokenizer(2048)
  assert len({tokenizer.word_id(w) for w in words}) == len(words)


def save_tiny_hf_encoders(directory) -> dict[str, str]:
  """Tiny random transformers T5 and CLIP text encoders on the byte vocabulary."""
  torch.manual_seed(0)
  t5 = transformers.T5EncoderModel(
      transformers.T5Config(
          vocab_size=BYTE_VOCAB,
          d_model=16,
          d_kv=4,
          d_ff=32,
          num_layers=2,
          num_heads=4,
          feed_forward_proj="gated-gelu",
          dropout_rate=0.0,
      )
  ).eval()
  clip = transformers.CLIPTextModel(
      transformers.CLIPTextConfig(
          vocab_size=BYTE_VOCAB,
          hidden_size=16,
          intermediate_size=32,
          num_hidden_layers=2,
          num_attention_heads=4,
          max_position_embeddings=77,
          bos_token_id=None,
          eos_token_id=1,
      )
  ).eval()
  paths = {}
  for name, model in (("t5", t5), ("clip", clip)):
    paths[name] = os.path.join(directory, name)
    model.save_pretrained(paths[name])
  return paths, {"t5": t5, "clip": clip}


def test_pretrained_encoders_embed_like_transformers(tmp_path):
  paths, models = save_tiny_hf_encoders(str(tmp_path))
  section = tiny_section()
  section.encoders.ul2.update(path=paths["t5"], model=ml_collections.ConfigDict())
  # 77 learned positions, extended to the 96-token max_length on load.
  section.encoders.metaclip.update(path=paths["clip"], model=ml_collections.ConfigDict())
  conditioner = TextConditioner(section)
  _, pretrained = conditioner.pretrained()
  _, frozen = conditioner.init(jax.random.key(0))
  frozen.update(pretrained)
  prompts = ["FPS-16 a red circle moves up", "FPS-24 a much longer prompt about a harbour"]
  tokens = conditioner.tokenize(prompts)
  out = conditioner.embed({}, frozen, tokens)
  with torch.no_grad():
    for name, model in (("ul2", models["t5"]), ("metaclip", models["clip"])):
      n = tokens[f"{name}_mask"].sum(1).max()  # pads after it change no valid output
      ids, mask = tokens[f"{name}_ids"][:, :n], tokens[f"{name}_mask"][:, :n]
      reference = model(
          input_ids=torch.tensor(ids, dtype=torch.long),
          attention_mask=torch.tensor(mask, dtype=torch.long),
      ).last_hidden_state
      diff = np.abs(np.asarray(out[name][0])[:, :n] - reference.numpy())[mask]
      assert diff.max() < 1e-4, (name, diff.max())


def save_word_tokenizer(directory):
  """A tiny word-level fast tokenizer that appends </s>, as T5's do, saved to `directory`."""
  from tokenizers import Tokenizer, models, pre_tokenizers, processors

  words = ["<pad>", "</s>", "<unk>", "a", "red", "circle", "moves", "left"]
  tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
  tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
  tokenizer.post_processor = processors.TemplateProcessing(
      single="$A </s>", special_tokens=[("</s>", 1)]
  )
  transformers.PreTrainedTokenizerFast(
      tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
  ).save_pretrained(directory)


def test_tokenizer_is_read_from_the_encoder_directory(tmp_path):
  paths, _ = save_tiny_hf_encoders(str(tmp_path))
  save_word_tokenizer(paths["t5"])
  section = tiny_section()
  section.encoders.ul2.update(
      path=paths["t5"], model=ml_collections.ConfigDict(), tokenizer="", max_length=4
  )
  conditioner = TextConditioner(section)
  tokens = conditioner.tokenize(["a red circle", "a red circle moves left"])
  np.testing.assert_array_equal(tokens["ul2_ids"], [[3, 4, 5, 1], [3, 4, 5, 1]])
  np.testing.assert_array_equal(tokens["ul2_mask"].sum(1), [4, 4])
  assert conditioner.num_truncated["ul2"] == 1  # the second kept its </s>


def test_precompute_matches_embed_and_runs_as_a_command(tmp_path):
  conditioner = TextConditioner(tiny_section())
  captions = ["FPS-16 a red circle", 'a sign that says "HELLO"', "a green square"]
  result = precompute_lib.precompute(conditioner, captions, batch_size=2)
  _, frozen = conditioner.init(jax.random.key(0))
  out = conditioner.embed({}, frozen, conditioner.tokenize(captions))
  for name, (emb, mask) in out.items():
    np.testing.assert_allclose(result[f"{name}_emb"], np.asarray(emb), atol=1e-5)
    np.testing.assert_array_equal(result[f"{name}_mask"], np.asarray(mask))
  with pytest.raises(ValueError, match="trainable"):
    precompute_lib.precompute(TextConditioner(tiny_section(trainable=True)), captions)

  captions_file = tmp_path / "captions.txt"
  captions_file.write_text("a red circle\n\n  \na blue square\n")
  out_file = tmp_path / "emb.npz"
  command = [
      sys.executable,
      "-m",
      "mgjax.text.precompute",
      "--config=experiments/t2v.py:tiny",
      f"--captions={captions_file}",
      f"--out={out_file}",
      "--config.text.encoders.ul2.trainable=False",
      "--config.text.encoders.metaclip.trainable=False",
      "--config.text.encoders.byt5.trainable=False",
  ]
  result = subprocess.run(
      command,
      capture_output=True,
      text=True,
      timeout=300,
      cwd=os.path.dirname(os.path.dirname(__file__)),
  )
  assert result.returncode == 0, result.stderr[-2000:]
  saved = precompute_lib.load_embeddings(str(out_file))
  assert list(saved["captions"]) == ["a red circle", "a blue square"]
  assert saved["ul2_emb"].shape == (2, 96, 64) and not saved["byt5_mask"].any()
