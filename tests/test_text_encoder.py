"""The word tokenizer and the small text encoder."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mgjax.models.text_encoder import PAD_ID, SmallTextEncoder, WordTokenizer


def test_tokenizer_is_deterministic_and_case_insensitive():
  tokenizer = WordTokenizer(vocab_size=1000, max_length=12)
  ids, mask = tokenizer(["FPS-16 a Red circle, moves left.", "fps-16 a red circle , moves left ."])
  np.testing.assert_array_equal(ids[0], ids[1])
  # FPS-16, a, red, circle, ",", moves, left, "." -> 8 tokens, then padding.
  assert mask[0].tolist() == [True] * 8 + [False] * 4
  assert (ids[0][~mask[0]] == PAD_ID).all() and (ids[0][mask[0]] != PAD_ID).all()
  assert ids.dtype == np.int32 and ids.shape == (2, 12)


def test_distinct_attribute_words_get_distinct_ids():
  tokenizer = WordTokenizer(vocab_size=4096, max_length=4)
  words = ["red", "green", "blue", "yellow", "purple", "cyan", "circle", "square",
           "triangle", "left", "right", "up", "down", "still", "bouncing"]
  ids = {tokenizer.token_id(w) for w in words}
  assert len(ids) == len(words)


def test_long_prompts_are_truncated_and_counted():
  tokenizer = WordTokenizer(vocab_size=100, max_length=5)
  long_prompt = " ".join(["word"] * 300)
  ids, mask = tokenizer([long_prompt, "short"])
  assert mask[0].all() and mask[1].sum() == 1
  assert tokenizer.num_truncated == 1


def test_tokenizer_rejects_a_bare_string_and_bad_sizes():
  with pytest.raises(TypeError, match="list of prompts"):
    WordTokenizer(100, 4)("a prompt")
  with pytest.raises(ValueError, match="vocab_size"):
    WordTokenizer(1, 4)


def test_encoder_ignores_padding_and_reads_words():
  tokenizer = WordTokenizer(vocab_size=512, max_length=8)
  encoder = SmallTextEncoder(vocab_size=512, max_length=8, embed_dim=32, num_layers=2,
                             num_heads=4)
  ids, mask = tokenizer(["a red circle", "a blue circle"])
  params = encoder.init(jax.random.key(0), ids, mask)
  out = encoder.apply(params, ids, mask)
  assert out.shape == (2, 8, 32)
  assert float(jnp.abs(out[:, 3:]).max()) == 0.0  # padding positions are zero
  assert float(jnp.abs(out[0, :3] - out[1, :3]).max()) > 1e-3  # the colour word matters
  # Changing what sits under padding changes nothing.
  garbage = jnp.where(mask, ids, 7)
  np.testing.assert_allclose(encoder.apply(params, garbage, mask), out, atol=1e-6)
