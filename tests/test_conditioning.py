"""Frame <-> latent arithmetic and every validation message."""

from __future__ import annotations

import pytest

from pusa_core.conditioning import frame_multiplier_table, parse_multipliers, parse_positions, plan_request
from pusa_core.facts import frames_needed, latent_frame_count, latent_to_pixel_frames, latent_to_seconds, pixel_frame_to_latent
from pusa_core import facts
from pusa_core.errors import PusaInputError
from pusa_core.requests import ImageToVideo, MultiFrames, Settings, TextToVideo, VideoToVideo


def test_latent_frame_maps():
    assert latent_frame_count(81) == 21 and latent_frame_count(1) == 1 and latent_frame_count(17) == 5
    assert latent_to_pixel_frames(0) == (0, 0)
    assert latent_to_pixel_frames(1) == (1, 4)
    assert latent_to_pixel_frames(20) == (77, 80)
    for frame in range(81):
        first, last = latent_to_pixel_frames(pixel_frame_to_latent(frame))
        assert first <= frame <= last
    assert latent_to_seconds(20, 16) == (77 / 16, 81 / 16)
    assert frames_needed([0, 1, 2, 3]) == 13 and frames_needed([0, 20]) == 81


def test_parsing_lists():
    assert parse_positions("0, 20") == (0, 20)
    assert parse_positions("0;1;2") == (0, 1, 2)
    assert parse_multipliers("0.2,0.5") == (0.2, 0.5)
    assert frame_multiplier_table(17, (0, 4), (0.2, 0.0)) == [0.2, 1.0, 1.0, 1.0, 0.0]


BASE = Settings(prompt="a cat", width=64, height=64, num_frames=17)


def mf(positions, multipliers, images=2, **settings):
    s = Settings(**{**BASE.__dict__, **settings})
    return MultiFrames(s, images=tuple("x.png" for _ in range(images)), positions=positions, multipliers=multipliers)


BAD = [
    (lambda: parse_positions(""), "positions", "is empty"),
    (lambda: parse_positions("0,,2"), "positions", "empty item"),
    (lambda: parse_positions("0,a"), "positions", "'a' is not a whole number"),
    (lambda: parse_positions("1.5"), "positions", "'1.5' is not a whole number"),
    (lambda: parse_multipliers("0.2,x"), "multipliers", "'x' is not a number"),
    (lambda: parse_multipliers("1.5"), "multipliers", "outside \\[0, 1\\]"),
    (lambda: parse_multipliers("nan"), "multipliers", "outside \\[0, 1\\]"),
    (lambda: plan_request(mf((0, 5), (0.2, 0.5))), "positions", "5 is out of range: 17 frames have latent indices 0..4"),
    (lambda: plan_request(mf((0, 0), (0.2, 0.5))), "positions", "0 is listed more than once"),
    (lambda: plan_request(mf((0, 4), (0.2,))), "multipliers", "has 1 values for 2 positions"),
    (lambda: plan_request(mf((0, 4), (0.2, -0.1))), "multipliers", "outside \\[0, 1\\]"),
    (lambda: plan_request(mf((0, 4, 2), (0.2, 0.3, 0.4))), "positions", "has 3 entries for 2 images"),
    (lambda: plan_request(mf((0, 4), (0.2, 0.5), num_frames=18)), "num_frames", "must be 4k\\+1.*try 17"),
    (lambda: plan_request(mf((0, 4), (0.2, 0.5), width=70)), "width", "multiple of 16.*try 64"),
    (lambda: plan_request(mf((0, 4), (0.2, 0.5), height=0)), "height", "multiple of 16"),
    (lambda: plan_request(mf((0, 4), (0.2, 0.5), steps=0)), "steps", f"from 1 to {facts.STEPS.high:g}"),
    (lambda: plan_request(mf((0, 4), (0.2, 0.5), cfg=float("inf"))), "cfg", f"from 1 to {facts.CFG.high:g}"),
    (lambda: plan_request(mf((0, 4), (0.2, 0.5), lora_alpha=9.0)), "lora_alpha", "from 0 to 5"),
    (lambda: plan_request(mf((0, 4), (0.2, 0.5), fit="stretch")), "fit", "'crop' or 'pad'"),
    (lambda: plan_request(mf((0, 4), (0.2, 0.5), steps=None)), "steps", "must be a whole number from 1"),
    (lambda: plan_request(mf((0, 4), (0.2, 0.5), steps="10")), "steps", "must be a whole number from 1"),
    (lambda: plan_request(mf((0, 4), (0.2, 0.5), cfg=float("nan"))), "cfg", "got nan"),
    (lambda: plan_request(mf((0, 4), (0.2, 0.5), num_frames=None)), "num_frames", "try 81"),
    (lambda: plan_request(mf((0, 4), (0.2, 0.5), width=float("nan"))), "width", "try 832"),
    (lambda: plan_request(mf((0, 4), (0.2, 0.5), prompt="x" * 5000)), "prompt", "has 5,000 characters; the limit is 4,000"),
    (lambda: parse_multipliers(""), "multipliers", "is empty; give a comma-separated list, e.g. 0.2,0.5"),
    (lambda: parse_positions(None), "positions", "is empty; give a comma-separated list, e.g. 0,20"),
    (lambda: parse_positions(3), "positions", "must be a comma-separated list like 0,20, got int"),
    (lambda: plan_request(mf((0, 4), (0.2, 0.5), seed=-1)), "seed", "from 0 to"),
    (lambda: plan_request(TextToVideo(Settings(**{**BASE.__dict__, "prompt": "  "}))), "prompt", "is empty"),
    (lambda: plan_request(ImageToVideo(BASE, image="")), "image", "is missing"),
    (lambda: plan_request(ImageToVideo(BASE, image="x.png", noise_multiplier=2.0)), "noise_multiplier", "outside"),
    (lambda: plan_request(VideoToVideo(BASE, video="", positions=(0,), multipliers=(0.0,))), "video", "is missing"),
    (lambda: plan_request(VideoToVideo(BASE, video="v.mp4", positions=(), multipliers=())), "positions", "is empty"),
]


@pytest.mark.parametrize("call,field,message", BAD, ids=[f"{i}-{b[1]}" for i, b in enumerate(BAD)])
def test_bad_inputs_name_the_field_and_the_fix(call, field, message):
    with pytest.raises(PusaInputError, match=message) as info:
        call()
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}: ")


def test_good_requests_plan():
    plan = plan_request(mf((0, 4), (0.2, 0.5)))
    assert plan.positions == (0, 4) and plan.num_latent_frames == 5
    assert plan.multiplier_vector().tolist()[1:4] == [1.0, 1.0, 1.0]
    assert plan_request(TextToVideo(BASE)).positions == ()
    assert plan_request(ImageToVideo(BASE, image="x.png")).multipliers == (0.2,)
