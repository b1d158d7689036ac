"""TRL's training rows: the training order (every query kind in every step, in proportion), and rows built when
read (lazy: no image decoded before a row is read), equal to the rows built up front."""
from __future__ import annotations

import numpy as np
import pytest

from grto_lib.data import load_dataset
from real_formats import earthreason_folder, reasonseg_folder, write_image, write_mask


def test_training_order_puts_every_query_kind_in_every_step_in_proportion():
    from collections import Counter

    from grto_lib.tinyworld.worlds import REASONSEG_KINDS
    from grto_lib.data import stratified_order

    rng = np.random.default_rng(0)
    kinds = list(rng.choice(list(REASONSEG_KINDS), size=400, p=list(REASONSEG_KINDS.values())))
    order = stratified_order(kinds, seed=3)
    assert sorted(order) == list(range(400))  # a permutation
    assert (order == stratified_order(kinds, seed=3)).all() and not (order == stratified_order(kinds, seed=4)).all()
    share = {k: n / 400 for k, n in Counter(kinds).items()}

    def worst_step(order):  # the largest gap between a kind's count in one RL step of 8 prompts and its share
        return max(abs(Counter(kinds[i] for i in order[s:s + 8]).get(k, 0) - 8 * p)
                   for s in range(0, 400, 8) for k, p in share.items())

    assert worst_step(order) < 2
    assert worst_step(np.random.default_rng(3).permutation(400)) >= 2.5  # a plain shuffle: steps differ widely
    # without kinds (real data) it is a plain seeded permutation
    assert sorted(stratified_order([None] * 50, seed=0)) == list(range(50))


# ---------------------------------------------------------------------------------------------------------------
# TRL's training rows: built when read, in the training order


def _rows_built_up_front(dataset, size, system_prompt, seed, rl_prompts):
    """The training rows as they were built before they were lazy (every sample read and its image resized up
    front, the list stored by ``datasets``, then put in the training order), and each sample's target mask."""
    from datasets import Dataset

    from grto_lib.data import training_order
    from grto_lib.prompts import build_messages, policy_view

    rows, targets = [], []
    for i in range(len(dataset)):
        scene = dataset.scene(i)
        rows.append({"prompt": build_messages(scene.sample.query, system_prompt),
                     "image": policy_view(scene.sample.image, size), "sample_index": i,
                     "query_kind": scene.query_kind})
        targets.append(scene.sample.mask)
    return Dataset.from_list(rows).select(training_order([r["query_kind"] for r in rows], seed, rl_prompts)), targets


def _without_none(value):
    """A conversation without the None-valued keys ``datasets`` adds when it stores one (``"text": None`` on an
    image part)."""
    if isinstance(value, dict):
        return {k: _without_none(v) for k, v in value.items() if v is not None}
    return [_without_none(v) for v in value] if isinstance(value, list) else value


@pytest.mark.parametrize("seed,rl_prompts", [(0, 0), (3, 8)])
def test_lazy_training_rows_are_the_rows_built_up_front(seed, rl_prompts):
    from grto_lib.prompts import TINY_SYSTEM_PROMPT
    from grto_lib.train import _training_rows

    dataset = load_dataset("reasonseg", "train", size=24, seed=seed)
    eager, targets = _rows_built_up_front(dataset, 96, TINY_SYSTEM_PROMPT, seed, rl_prompts)
    lazy = _training_rows(dataset, 96, TINY_SYSTEM_PROMPT, seed, rl_prompts)
    assert len(lazy) == len(eager) == (rl_prompts or 24)
    assert len({eager[r]["query_kind"] for r in range(len(eager))}) >= 3  # the order is stratified over kinds
    batch = lazy[0:len(lazy)]  # a batch, as TRL's data loader reads them
    for r in range(len(eager)):
        built, read = eager[r], lazy[r]
        assert read["sample_index"] == built["sample_index"] == batch["sample_index"][r]
        assert read["query_kind"] == built["query_kind"] and read["prompt"] == _without_none(built["prompt"])
        assert read["prompt"][1]["content"][1]["text"] == dataset[read["sample_index"]].query
        assert read["image"].size == (96, 96)
        assert (np.asarray(read["image"]) == np.asarray(built["image"])).all()
        assert (np.asarray(batch["image"][r]) == np.asarray(built["image"])).all()
        assert (dataset[read["sample_index"]].mask == targets[built["sample_index"]]).all()
    # TRL's sampler repeats every prompt G times in a batch: each repeat is the same row
    repeated = lazy.__getitems__([r for r in range(len(eager)) for _ in range(3)])
    for k, row in enumerate(repeated):
        built = eager[k // 3]
        assert row["sample_index"] == built["sample_index"] and row["prompt"] == _without_none(built["prompt"])
        assert (np.asarray(row["image"]) == np.asarray(built["image"])).all()


def _real_folder(name, tmp_path):
    """A folder of ``name``'s real release format with 3 or 4 samples, and its split."""
    if name == "reasonseg":
        reasonseg_folder(tmp_path)
    elif name == "cod":
        for stem, box in (("a", (2, 3, 12, 8)), ("b", (5, 5, 30, 20)), ("c", (0, 0, 40, 2))):
            write_image(tmp_path / "Imgs" / f"{stem}.jpg", value=(ord(stem), 90, 10))
            write_mask(tmp_path / "GT" / f"{stem}.png", box=box)
    else:
        earthreason_folder(tmp_path)
    return tmp_path, "val"


def _files_read(dataset, index) -> list[str]:
    """The image files reading sample ``index`` of a real dataset opens: its image, then its mask (ReasonSeg's
    ground truth is a json)."""
    entry = dataset.entries[index]
    return [str(entry.image)] + ([] if entry.target.suffix == ".json" else [str(entry.target)])


@pytest.mark.parametrize("name", ["reasonseg", "cod", "earthreason"])
def test_training_rows_of_a_real_folder_read_no_image_until_a_row_is_read(name, tmp_path, monkeypatch):
    import PIL.Image

    from grto_lib.prompts import SYSTEM_PROMPT, policy_view
    from grto_lib.train import _training_rows

    root, split = _real_folder(name, tmp_path)
    opened, open_ = [], PIL.Image.open
    monkeypatch.setattr(PIL.Image, "open", lambda path, *a, **k: opened.append(str(path)) or open_(path, *a, **k))
    dataset = load_dataset(name, split, root=root)
    rows = _training_rows(dataset, 64, SYSTEM_PROMPT, seed=0)
    assert len(rows) == len(dataset) >= 3 and opened == []
    assert sorted(rows.with_format(None)["sample_index"]) == list(range(len(dataset))) and opened == []
    row = rows[1]
    assert opened == _files_read(dataset, row["sample_index"])
    assert row["query_kind"] is None and row["prompt"][1]["content"][1]["text"] == dataset[row["sample_index"]].query
    opened.clear()
    batch = rows[0:2]  # a batch, as TRL's data loader reads them
    assert opened == [f for i in batch["sample_index"] for f in _files_read(dataset, i)]
    for image, i in zip(batch["image"], batch["sample_index"]):
        assert (np.asarray(image) == np.asarray(policy_view(dataset[i].image, 64))).all()
