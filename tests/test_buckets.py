"""Aspect-ratio x duration bucket assignment."""

import pytest

from mgjax.data.buckets import assign_bucket, buckets_from_config

BUCKETS = buckets_from_config(
    [
        ("image_square", 1, 64, 64, 32),
        ("image_wide", 1, 64, 112, 32),
        ("square_short", 8, 64, 64, 8),
        ("square_long", 32, 64, 64, 4),
        ("wide_long", 32, 64, 112, 4),
    ]
)


def video(width, height, num_frames, fps=16):
  return {"video": "v.mp4", "width": width, "height": height, "num_frames": num_frames, "fps": fps}


def test_videos_go_to_the_nearest_aspect_and_longest_fitting_duration():
  assert assign_bucket(video(640, 640, 100), BUCKETS, 16).name == "square_long"
  assert assign_bucket(video(600, 640, 20), BUCKETS, 16).name == "square_short"
  assert assign_bucket(video(1920, 1080, 64), BUCKETS, 16).name == "wide_long"


def test_frame_rate_changes_how_many_frames_a_video_covers():
  # 40 frames at 30 fps last 1.33 s: 21 frames at 16 fps, too short for 32.
  assert assign_bucket(video(64, 64, 40, fps=30), BUCKETS, 16).name == "square_short"
  assert assign_bucket(video(64, 64, 40, fps=30), BUCKETS, None).name == "square_long"


def test_too_short_videos_fit_no_bucket():
  assert assign_bucket(video(64, 64, 4), BUCKETS, 16) is None


def test_images_go_to_image_buckets():
  image = {"image": "i.png", "width": 1280, "height": 720}
  assert assign_bucket(image, BUCKETS, 16).name == "image_wide"


@pytest.mark.parametrize(
    "entries,match",
    [
        ([("a", 1, 64, 64)], "5 fields"),
        ([("a", 0, 64, 64, 2)], "positive"),
        ([("a", 1, 64, 64, 2), ("a", 8, 64, 64, 2)], "unique"),
        ([], "at least one"),
    ],
)
def test_bad_bucket_tables_are_rejected(entries, match):
  with pytest.raises(ValueError, match=match):
    buckets_from_config(entries)
