"""The answer parser under hostile input, and every reward term on hand-computed cases.

Fuzzing runs ~200 examples per property; ``HYPOTHESIS_PROFILE=large`` runs 20 000 for a long fuzz.
"""
import json
import math
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from grto_lib.prompts import format_answer
from grto_lib.rewards import (
    COORD_LIMIT,
    MAX_PAYLOAD_CHARS,
    MAX_POINTS,
    Answer,
    RewardWeights,
    answer_reward,
    box_reward,
    format_reward,
    mask_reward,
    parse_box,
    parse_answer,
    points_reward,
)

FUZZ = settings(
    max_examples=20_000 if os.environ.get("HYPOTHESIS_PROFILE") == "large" else 200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

GOOD = '<think>the red circle</think><answer>{"bbox": [12, 30, 50, 61], "points": [[20, 40], [30, 45]]}</answer>'
SPACED = (
    '<think> the red circle </think> <answer> { "bbox" : [ 12 , 30 , 50 , 61 ] , '
    '"points" : [ [ 20 , 40 ] , [ 30 , 45 ] ] } </answer>'
)


def wrap(payload: str, think: str = "x") -> str:
    return f"<think>{think}</think><answer>{payload}</answer>"


def assert_valid(answer):
    """The invariants every parsed answer satisfies."""
    assert isinstance(answer, Answer)
    assert len(answer.bbox) == 4
    assert all(isinstance(v, float) and math.isfinite(v) and abs(v) <= COORD_LIMIT for v in answer.bbox)
    x1, y1, x2, y2 = answer.bbox
    assert x1 <= x2 and y1 <= y2
    assert len(answer.points) <= MAX_POINTS
    for p in answer.points:
        assert len(p) == 2 and all(isinstance(v, float) and math.isfinite(v) for v in p)


# --- parse_answer: examples -----------------------------------------------------------------------------


def test_parses_the_canonical_and_the_spaced_forms():
    for text in (GOOD, SPACED, "\n" + SPACED.replace(" ", "\n\t ") + "\n"):
        answer = parse_answer(text)
        assert answer == Answer((12.0, 30.0, 50.0, 61.0), [(20.0, 40.0), (30.0, 45.0)])


def test_parse_ignores_think_and_extra_keys_and_accepts_floats_and_empty_points():
    answer = parse_answer('<answer>{"points": [], "bbox": [1.5, 2, 3e1, 4], "label": "circle"}</answer>')
    assert answer == Answer((1.5, 2.0, 30.0, 4.0), [])
    assert parse_answer(wrap('{"bbox": [1, 2, 3, 4]}')) == Answer((1.0, 2.0, 3.0, 4.0), [])  # no points key


@pytest.mark.parametrize("payload", [
    '{"bbox_2d": [12, 30, 50, 61], "point_2d": [20, 40], "label": "red circle"}',
    '[{"bbox_2d": [12, 30, 50, 61], "point_2d": [20, 40], "label": "red circle"}]',
    '```json\n[\n\t{"bbox_2d": [12, 30, 50, 61], "point_2d": [20, 40], "label": "red circle"}\n]\n```',
    '\n```json\n{"bbox": [12, 30, 50, 61], "points": [[20, 40]]}\n```\n',
])
def test_qwen_native_grounding_json_parses_inside_the_answer_tags(payload):
    """Qwen2.5-VL's own grounding output: ``bbox_2d`` / ``point_2d`` keys, a one-element list of objects, often in a
    Markdown code fence. Inside the answer tags it parses like the project's own keys and earns the format reward."""
    text = f"<think>The query asks for the red circle; it is on the left.</think>\n<answer>{payload}</answer>"
    assert parse_answer(text) == Answer((12.0, 30.0, 50.0, 61.0), [(20.0, 40.0)])
    assert format_reward(text) == 1.0 and answer_reward(text) == 1.0


def test_a_completion_written_as_the_real_models_prompt_instructs_parses_and_earns_the_format_reward():
    from grto_lib.prompts import ANSWER_EXAMPLE, SYSTEM_PROMPT

    assert SYSTEM_PROMPT.endswith(ANSWER_EXAMPLE)  # the prompt shows the exact form it asks for
    for key in ("<think>", "</think>", "<answer>", "</answer>", '"bbox"', '"points"', "pixels"):
        assert key in SYSTEM_PROMPT, key
    answer = parse_answer(ANSWER_EXAMPLE)
    assert answer == Answer((10.0, 100.0, 200.0, 210.0), [(30.0, 110.0), (35.0, 180.0)])
    assert format_reward(ANSWER_EXAMPLE) == 1.0 and answer_reward(ANSWER_EXAMPLE) == 1.0


@pytest.mark.parametrize(
    "text",
    [
        "",
        "no tags at all",
        "<think>a</think>",
        '<think>a</think><answer>{"bbox": [1, 2',  # truncated
        '<think>a</think><answer>{"bbox": [1, 2, 3, 4], "points": []}',  # unclosed answer
        '{"bbox": [1, 2, 3, 4], "points": []}</answer>',  # no opening tag
        '</answer>{"bbox": [1, 2, 3, 4], "points": []}<answer>',  # tags reversed
        wrap('{"bbox": [1, 2, 3, 4], "points": []}') + wrap('{"bbox": [1, 2, 3, 4], "points": []}'),  # two answers
        wrap('{"bbox": [1, 2, 3, 4], "points": []} <answer>'),  # nested opening tag
        wrap("[1, 2, 3, 4]"),  # not an object
        wrap('{"bbox": [1, 2, 3], "points": []}'),  # three numbers
        wrap('{"bbox": [1, 2, 3, 4, 5], "points": []}'),
        wrap('{"bbox": [NaN, 2, 3, 4], "points": []}'),
        wrap('{"bbox": [1, 2, Infinity, 4], "points": []}'),
        wrap('{"bbox": [-Infinity, 2, 3, 4], "points": []}'),
        wrap('{"bbox": [1, 2, 1e400, 4], "points": []}'),  # overflows to inf
        wrap('{"bbox": [1, 2, ' + "9" * 400 + ", 4], \"points\": []}"),  # int beyond float range
        wrap('{"bbox": [1, 2, ' + "9" * 4500 + ", 4], \"points\": []}"),  # beyond the payload limit
        wrap('{"bbox": [30, 2, 10, 4], "points": []}'),  # x2 < x1: not swapped
        wrap('{"bbox": [1, 20, 3, 4], "points": []}'),  # y2 < y1
        wrap('{"bbox": [true, 2, 3, 4], "points": []}'),
        wrap('{"bbox": ["1", 2, 3, 4], "points": []}'),
        wrap('{"bbox": [1, 2, 3, 4], "bbox_2d": [1, 2, 3, 4], "points": []}'),  # two box keys: ambiguous
        wrap('{"bbox": [1, 2, 3, 4], "points": [], "point_2d": [1, 2]}'),  # two point keys
        wrap('{"points": [[1, 2]]}'),  # no box
        wrap('[{"bbox": [1, 2, 3, 4]}, {"bbox": [5, 6, 7, 8]}]'),  # several objects: a hedge
        wrap('[]'),
        wrap('{"bbox_2d": [1, 2, 3, 4], "point_2d": [[1, 2], [3, 4]]}'),  # point_2d is one pair
        wrap('```json\n{"bbox": [1, 2, 3, 4]}'),  # an unclosed code fence
        wrap('{"bbox": [1, 2, 3, 4], "points": [[1, 2, 3]]}'),  # not a pair
        wrap('{"bbox": [1, 2, 3, 4], "points": [1, 2]}'),  # flat list
        wrap('{"bbox": [1, 2, 3, 4], "points": [[1, null]]}'),
        wrap('{"bbox": [1, 2, 3, 4], "points": {"x": 1}}'),
        wrap('{"bbox": [1, 2, 3, 4], "points": ' + json.dumps([[1, 2]] * (MAX_POINTS + 1)) + "}"),
        wrap('{"bbox": [1, 2, 3, 4], "points": [],}'),  # trailing comma
        wrap("{'bbox': [1, 2, 3, 4], 'points': []}"),  # single quotes
        wrap('{"bbox": ' + "[" * 3000 + "]" * 3000 + ', "points": []}'),  # nested junk
        wrap("[" * 4000),  # unbalanced nesting
        wrap('{"bbox": [１, 2, 3, 4], "points": []}'),  # full-width digit
        wrap('{"bbox": [1, 2, 3, 4], "points": []} ☃ ünïcödé'),
        wrap("\x00\ud800"),  # NUL and a lone surrogate
        None,
        b"<answer>{}</answer>",
    ],
)
def test_hostile_completions_give_none(text):
    assert parse_answer(text) is None
    assert answer_reward(text) == 0.0


def test_negative_and_huge_finite_numbers_are_kept_and_clamped():
    answer = parse_answer(wrap('{"bbox": [-5, -1e300, 1e300, 20], "points": [[-3, 1e12]]}'))
    assert answer == Answer((-5.0, -COORD_LIMIT, COORD_LIMIT, 20.0), [(-3.0, COORD_LIMIT)])


def test_non_ascii_in_think_is_fine():
    assert parse_answer(wrap('{"bbox": [1, 2, 3, 4], "points": [[2, 3]]}', think="größer 🙂 較大")) is not None


def test_100k_character_inputs_cost_linear_scans_and_at_most_one_bounded_json_decode(monkeypatch):
    """What keeps the parser fast on hostile input (benchmarks/parser_and_generation_speed.py measures it): the tags
    are found by linear scans (``str.count`` / ``str.find``; the module has no regular expression to backtrack), and
    ``json.loads`` runs at most once, on at most ``MAX_PAYLOAD_CHARS`` characters, however long the completion."""
    import grto_lib.rewards as rewards

    decoded = []

    def counting_loads(payload, *args, **kwargs):
        decoded.append(len(payload))
        return json.loads(payload, *args, **kwargs)

    monkeypatch.setattr(rewards, "json", type("CountingJson", (), {"loads": staticmethod(counting_loads)}))
    junk = [
        "<" * 100_000,
        "<answer>" + "[" * 100_000,
        wrap("{" * 100_000),
        wrap(" " * 100_000 + '{"bbox": [1, 2, 3, 4], "points": []}'),
        "<think>" + "a" * 100_000 + '</think><answer>{"bbox": [1, 2, 3, 4], "points": []}</answer>',
        "<answer></answer>" * 20_000,
        wrap("[" * MAX_PAYLOAD_CHARS),  # the deepest nesting decoded: RecursionError, caught
    ]
    results = []
    for text in junk:
        before = len(decoded)
        results.append((parse_answer(text), format_reward(text)))
        assert len(decoded) - before <= 1 and all(n <= MAX_PAYLOAD_CHARS for n in decoded), (text[:20], decoded)
    assert len(decoded) == 2  # the long think's answer and the deep nesting; every other payload is refused unread
    assert results[4][0] is not None and results[4][1] == 1.0  # a long think is legal
    assert all(r[0] is None for i, r in enumerate(results) if i != 4)
    assert not any(getattr(value, "__name__", None) == "re" for value in vars(rewards).values())


def test_in_image_pixels_scales_and_clips():
    a = parse_answer(wrap('{"bbox": [-8, 16, 64, 200], "points": [[32, 32], [200, -4]]}'))
    mapped = a.in_image_pixels(image_hw=(64, 256), policy_image_size=128)  # x scale 2, y scale 0.5
    assert mapped == Answer((0.0, 8.0, 128.0, 64.0), [(64.0, 16.0), (255.0, 0.0)])


def test_answer_constructor_enforces_invariants():
    with pytest.raises(ValueError, match="x1 <= x2"):
        Answer((3.0, 0.0, 1.0, 1.0), [])
    with pytest.raises(ValueError, match="finite"):
        Answer((0.0, 0.0, math.nan, 1.0), [])
    with pytest.raises(ValueError, match="pairs"):
        Answer((0.0, 0.0, 1.0, 1.0), [(1.0, math.inf)])


@FUZZ
@given(
    box=st.tuples(*[st.integers(0, 2000)] * 4),
    points=st.lists(st.tuples(st.integers(-50, 2000), st.integers(-50, 2000)), max_size=MAX_POINTS),
    think=st.text().filter(lambda s: not any(t in s for t in ("<think>", "</think>", "<answer>", "</answer>"))),
)
def test_round_trip_with_format_answer(box, points, think):
    x1, x2 = sorted(box[::2])
    y1, y2 = sorted(box[1::2])
    text = format_answer([x1, y1, x2, y2], points, think)
    answer = parse_answer(text)
    assert answer.bbox == (x1, y1, x2, y2)
    assert answer.points == [tuple(map(float, p)) for p in points]
    assert format_reward(text) == 1.0


# --- parse_answer: properties ---------------------------------------------------------------------------

TAGS = ["<think>", "</think>", "<answer>", "</answer>"]
FRAGMENTS = TAGS + ['{"bbox":', '"points":', "[", "]", "{", "}", ",", " ", "NaN", "-Infinity", "1e308", "-0", "12"]
NUMBERS = st.one_of(
    st.integers(-(10**30), 10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, -1, 1e-320, 1e308, -1e308, 2**53 + 1]),
)
JSONISH = st.recursive(
    st.one_of(st.none(), st.booleans(), NUMBERS, st.text(max_size=8)),
    lambda children: st.one_of(
        st.lists(children, max_size=5), st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=20,
)
PAYLOADS = st.one_of(
    JSONISH,
    st.fixed_dictionaries({"bbox": st.lists(NUMBERS, min_size=3, max_size=5), "points": JSONISH}),
    st.fixed_dictionaries(
        {
            "bbox": st.lists(NUMBERS, min_size=4, max_size=4),
            "points": st.lists(st.lists(NUMBERS, min_size=1, max_size=3), max_size=4),
        }
    ),
)


def check_text(text):
    answer = parse_answer(text)
    if answer is not None:
        assert_valid(answer)
    assert answer_reward(text) == float(answer is not None)
    assert format_reward(text) in (0.0, 1.0)


@FUZZ
@given(st.text())
def test_arbitrary_text_never_raises(text):
    check_text(text)


@FUZZ
@given(st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=5)), max_size=30).map("".join))
def test_tag_and_json_soup_never_raises(text):
    check_text(text)


@FUZZ
@given(PAYLOADS, st.sampled_from([0, 1, 2, None]))
def test_arbitrary_json_payloads_never_raise(payload, indent):
    check_text(wrap(json.dumps(payload, indent=indent)))


@FUZZ
@given(
    bbox=st.lists(st.floats(allow_nan=False, allow_infinity=False), min_size=4, max_size=4),
    points=st.lists(st.tuples(st.floats(-1e9, 1e9), st.floats(-1e9, 1e9)), max_size=4),
)
def test_finite_ordered_boxes_always_parse(bbox, points):
    x1, x2 = sorted(bbox[::2])
    y1, y2 = sorted(bbox[1::2])
    answer = parse_answer(wrap(json.dumps({"bbox": [x1, y1, x2, y2], "points": points})))
    assert_valid(answer)
    clamp = lambda v: min(max(v, -COORD_LIMIT), COORD_LIMIT)  # noqa: E731
    assert answer.bbox == tuple(clamp(v) for v in (x1, y1, x2, y2))


# --- format_reward ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        (GOOD, 1.0),
        (SPACED, 1.0),
        ("  \n" + GOOD + "\n", 1.0),
        ("<think></think><answer></answer>", 1.0),  # format only; the answer term judges the content
        (wrap("{}").replace("<think>x</think>", ""), 0.0),  # no think
        ("<answer>{}</answer><think>x</think>", 0.0),  # wrong order
        ("<think>x</answer></think><answer>{}</answer>", 0.0),  # answer closed inside think
        ("<think>x</think><think>y</think><answer>{}</answer>", 0.0),  # two thinks
        ("hello " + GOOD, 0.0),  # text before
        (GOOD + " bye", 0.0),  # text after
        ("<think>x</think> so <answer>{}</answer>", 0.0),  # text between
        ("<think>x<answer>{}</answer>", 0.0),  # unclosed think
        ("", 0.0),
        (None, 0.0),
    ],
)
def test_format_reward(text, expected):
    assert format_reward(text) == expected


# --- geometric terms --------------------------------------------------------------------------------------


def answer(bbox, points=()):
    return Answer(tuple(float(v) for v in bbox), [tuple(map(float, p)) for p in points])


def test_box_reward_is_iou_or_thresholded_iou():
    a = answer([0, 0, 10, 10])
    assert box_reward(a, [5, 0, 15, 10]) == pytest.approx(50 / 150)
    assert box_reward(a, [5, 0, 15, 10], threshold=0.5) == 0.0
    assert box_reward(a, [0, 0, 10, 12], threshold=0.5) == 1.0
    assert box_reward(None, [0, 0, 10, 10]) == 0.0


def test_box_reward_clips_to_the_image():
    huge = answer([-COORD_LIMIT, -10, 10, COORD_LIMIT])
    assert box_reward(huge, [0, 0, 10, 20], image_hw=(20, 30)) == 1.0
    assert box_reward(huge, [0, 0, 10, 20]) == pytest.approx(200 / ((COORD_LIMIT + 10) * (COORD_LIMIT + 10)))
    outside = answer([40, 40, 50, 50])  # entirely right of / below a 20 x 30 image: clipped to zero area
    assert box_reward(outside, [0, 0, 10, 20], image_hw=(20, 30)) == 0.0


def test_points_reward_is_fraction_inside_with_clipping():
    mask = np.zeros((4, 4), bool)
    mask[0, 0] = mask[3, 0] = True
    assert points_reward(answer([0, 0, 1, 1], [(0.5, 0.5), (3.9, 3.9)]), mask) == 0.5
    # (-5, 100) clips to column 0, row 3 (inside); (4.0, 0.2) clips to column 3 (outside); (1.0, 0.0) is column 1
    assert points_reward(answer([0, 0, 1, 1], [(-5, 100), (4.0, 0.2), (1.0, 0.0)]), mask) == pytest.approx(1 / 3)
    assert points_reward(answer([0, 0, 1, 1], []), mask) == 0.0
    assert points_reward(None, mask) == 0.0


def test_mask_reward_is_iou_with_ignore():
    pred = np.zeros((4, 4), bool)
    pred[:2] = True
    gt = np.zeros((4, 4), bool)
    gt[:, :2] = True
    ignore = np.zeros((4, 4), bool)
    ignore[0] = True
    assert mask_reward(pred, gt) == pytest.approx(4 / 12)
    assert mask_reward(pred, gt, ignore) == pytest.approx(2 / 8)
    assert mask_reward(None, gt) == 0.0
    assert mask_reward(np.zeros((2, 2), bool), np.zeros((2, 2), bool)) == 1.0


def test_reward_weights_total_weighs_every_term():
    gt = np.zeros((4, 4), bool)
    gt[:, :2] = True
    pred = np.zeros((4, 4), bool)
    pred[:2] = True
    a = answer([0, 0, 2, 2], [(0.5, 0.5), (3.5, 0.5)])  # box IoU 4/8, one point in two
    terms = {"format": format_reward(GOOD), "answer": answer_reward(GOOD), "box": box_reward(a, [0, 0, 2, 4], gt.shape),
             "points": points_reward(a, gt), "mask": mask_reward(pred, gt)}
    assert terms == pytest.approx({"format": 1.0, "answer": 1.0, "box": 0.5, "points": 0.5, "mask": 1 / 3})
    assert RewardWeights().total(terms) == pytest.approx(0.5 * 1 + 0.5 * 1 + 1.0 * 0.5 + 0.5 * 0.5 + 2.0 / 3)
    # one value per rollout: an array of totals; junk earns 0 on every term (no answer, hence no mask), whatever
    # the weights
    junk = {"format": format_reward("junk"), "answer": answer_reward("junk"), "box": box_reward(None, [0, 0, 2, 4]),
            "points": points_reward(None, gt), "mask": mask_reward(None, gt)}
    assert junk == dict.fromkeys(junk, 0.0)
    rollouts = {name: [terms[name], junk[name]] for name in terms}
    assert RewardWeights(mask=5.0).total(rollouts) == pytest.approx([0.5 + 0.5 + 0.5 + 0.25 + 5 / 3, 0.0])


def test_the_scorer_gives_each_rollout_these_terms_and_training_weighs_them_with_reward_weights(tmp_path):
    """Training scores its rollouts with ``RolloutScorer.score`` (one call per generation batch): the format term on
    the text, the others on the answer mapped from the policy's view to image pixels, the mask term on the tool's
    mask from that answer; an answer that does not parse gets no mask and 0 on every term but the format. TRL adds
    the terms with ``RewardWeights`` (``grpo_args``' ``reward_weights``, in ``TERMS`` order)."""
    from grto_lib.config import TrainConfig
    from grto_lib.data import load_dataset
    from grto_lib.geometry import mask_to_box
    from grto_lib.scorer import TERMS, RolloutScorer
    from grto_lib.tinyworld.standins import STANDINS_DIR
    from grto_lib.tool import load_tool, load_tool_config
    from grto_lib.train import grpo_args

    dataset = load_dataset("reasonseg", "train", size=1)
    sample = dataset[0]
    assert sample.mask.shape == (128, 128)
    box = mask_to_box(sample.mask)
    row, col = np.argwhere(sample.mask)[0]
    view = 256  # the policy's view at twice the image's size: its integer coordinates map back exactly
    on_target = format_answer(box * 2, [[2 * col + 1, 2 * row + 1]] * 2)  # the point (col + 0.5, row + 0.5)
    no_tags = on_target[on_target.index("<answer>"):]  # parses, but misses the format
    unparsed = wrap("not json")  # the format, but no answer
    texts = [on_target, no_tags, unparsed]
    scored = RolloutScorer(dataset, load_tool(load_tool_config(STANDINS_DIR / "tool")), view).score(texts, [0, 0, 0])

    assert scored.terms["format"] == [1.0, 0.0, 1.0] and scored.terms["answer"] == [1.0, 1.0, 0.0]
    assert scored.terms["box"] == [1.0, 1.0, 0.0] and scored.terms["points"] == [1.0, 1.0, 0.0]
    assert scored.pred_masks[2] is None and scored.terms["mask"][2] == 0.0
    for i in (0, 1):
        assert scored.pred_masks[i].shape == sample.mask.shape
        assert scored.terms["mask"][i] == mask_reward(scored.pred_masks[i], sample.mask, sample.ignore)
    assert 0.0 < scored.terms["mask"][0] <= 1.0  # the stand-in tool, prompted with the target's box, finds it

    weights = RewardWeights(mask=5.0)
    args = grpo_args(TrainConfig(reward_weights={"mask": 5.0}, output_dir=str(tmp_path)), tmp_path)
    assert args.reward_weights == [getattr(weights, name) for name in TERMS] == [0.5, 0.5, 1.0, 0.5, 5.0]
    expected = [sum(w * scored.terms[name][i] for w, name in zip(args.reward_weights, TERMS)) for i in range(3)]
    assert weights.total(scored.terms) == pytest.approx(expected)
    assert expected[2] == 0.5  # the format alone


def test_default_weights_favour_the_mask():
    w = RewardWeights()
    assert (w.format, w.answer, w.box, w.points, w.mask) == (0.5, 0.5, 1.0, 0.5, 2.0)
    assert w.mask > max(w.format, w.answer, w.box, w.points)


ANSWERS = st.builds(
    lambda b, pts: answer([min(b[0], b[2]), min(b[1], b[3]), max(b[0], b[2]), max(b[1], b[3])], pts),
    st.tuples(*[st.floats(-COORD_LIMIT, COORD_LIMIT)] * 4),
    st.lists(st.tuples(st.floats(-COORD_LIMIT, COORD_LIMIT), st.floats(-COORD_LIMIT, COORD_LIMIT)), max_size=4),
)


@FUZZ
@given(
    a=st.one_of(st.none(), ANSWERS),
    gt_box=st.tuples(*[st.integers(0, 16)] * 4),
    mask_bits=st.lists(st.booleans(), min_size=64, max_size=64),
    pred_bits=st.lists(st.booleans(), min_size=64, max_size=64),
    threshold=st.sampled_from([None, 0.5]),
)
def test_reward_terms_stay_in_range(a, gt_box, mask_bits, pred_bits, threshold):
    mask = np.array(mask_bits).reshape(8, 8)
    pred = np.array(pred_bits).reshape(8, 8)
    gt = [min(gt_box[0], gt_box[2]), min(gt_box[1], gt_box[3]), max(gt_box[0], gt_box[2]), max(gt_box[1], gt_box[3])]
    for image_hw in (None, (8, 8)):
        value = box_reward(a, gt, image_hw, threshold)
        assert math.isfinite(value) and 0.0 <= value <= 1.0
    assert 0.0 <= points_reward(a, mask) <= 1.0
    assert 0.0 <= mask_reward(pred, mask) <= 1.0
    total = RewardWeights().total({"format": format_reward(GOOD), "answer": answer_reward(GOOD),
                                   "box": box_reward(a, gt, mask.shape, threshold), "points": points_reward(a, mask),
                                   "mask": mask_reward(pred, mask) if a is not None else 0.0})
    assert 0.0 <= total <= 4.5 and math.isfinite(total)


@pytest.mark.parametrize("value, expected", [
    ([1, 2, 3, 4], (1.0, 2.0, 3.0, 4.0)), ([5, 5, 5, 9], (5.0, 5.0, 5.0, 9.0)),
    ([0, 0, 10 ** 30, 1], (0.0, 0.0, COORD_LIMIT, 1.0)),
    ([3, 2, 1, 4], None), ([1, 4, 3, 2], None), ([True, 2, 3, 4], None), (["1", 2, 3, 4], None), ([1, 2, 3], None),
    ([1, 2, 3, float("nan")], None), ((1, 2, 3, 4), None), (None, None)])
def test_parse_box_accepts_only_four_finite_ordered_numbers(value, expected):
    assert parse_box(value) == expected
