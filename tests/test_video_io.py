"""common/video_io.py: the float video -> uint8 frames conversion used before every encode."""

import numpy as np
import torch

from soraflow.common.video_io import to_uint8_frames


def test_uint8_conversion_is_the_same_for_tensors_and_arrays():
    values = torch.tensor([-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 3.0])  # clipped to [-1, 1], then (x + 1) * 127.5
    video = values.view(1, 1, 1, 7).expand(3, 2, 1, 7).contiguous()
    expected = np.array([0, 0, 64, 128, 191, 255, 255], dtype=np.uint8)  # round half to even: 63.75 -> 64
    for frames in (to_uint8_frames(video), to_uint8_frames(video.numpy()), to_uint8_frames(video.bfloat16())):
        assert frames.shape == (2, 1, 7, 3) and frames.dtype == np.uint8
        np.testing.assert_array_equal(frames[0, 0, :, 0], expected)
    rand = torch.rand(3, 4, 6, 8) * 2.4 - 1.2
    np.testing.assert_array_equal(to_uint8_frames(rand), to_uint8_frames(rand.numpy()))
