"""The tool: shapes, gradients, the batched decoder against segment_anything's own, coordinates, checkpoints."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from segment_anything import sam_model_registry
from segment_anything.utils.transforms import ResizeLongestSide

from grto_lib.data import load_dataset
from grto_lib.tool import (
    FOURIER_MATRIX,
    ToolConfig,
    load_tool,
    load_tool_config,
    save_tool,
    trainable_parameters,
)
from grto_lib.tinyworld.tool_standin import augment_scene, generic_scene, jittered_prompts, train_tool_standin, zoom_out

torch.set_num_threads(1)


def make_tool(**overrides):
    overrides.setdefault("image_size", 64)
    torch.manual_seed(0)
    return load_tool(ToolConfig(**overrides))


def random_images(n, hw=(128, 128), seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (*hw, 3), dtype=np.uint8) for _ in range(n)]


BOXES = torch.tensor([[10, 10, 50, 60], [0, 0, 128, 128], [30, 40, 90, 100], [5, 5, 20, 20], [60, 60, 120, 110.0]])
POINTS = torch.tensor([[[30, 35], [20, 20]], [[64, 64], [10, 100]], [[60, 70], [50, 50]],
                       [[12, 12], [8, 8]], [[90, 85], [100, 100.0]]])
INDEX = torch.tensor([0, 0, 1, 2, 2])


def test_embed_and_decode_shapes():
    tool = make_tool()  # 64 px input, patch 8, 32 channels
    emb = tool.embed(random_images(3))
    assert emb.shape == (3, 32, 8, 8) and not emb.requires_grad
    logits = tool.decode(emb, INDEX, BOXES, POINTS, [(128, 128)] * 3)
    assert logits.shape == (5, 128, 128) and logits.requires_grad
    assert torch.equal(tool.predict(emb, INDEX, BOXES, POINTS, [(128, 128)] * 3), logits > 0)
    # points only, and boxes only
    assert tool.decode(emb, INDEX, None, POINTS, [(128, 128)] * 3).shape == (5, 128, 128)
    assert tool.decode(emb, INDEX, BOXES, None, [(128, 128)] * 3).shape == (5, 128, 128)


def test_images_of_different_sizes_give_a_list_at_each_original_size():
    tool = make_tool()
    sizes = [(128, 128), (100, 64), (64, 128)]
    emb = tool.embed([random_images(1, hw)[0] for hw in sizes])
    out = tool.decode(emb, INDEX, BOXES, POINTS, sizes)
    assert [tuple(o.shape) for o in out] == [(128, 128), (128, 128), (100, 64), (64, 128), (64, 128)]


def test_batched_decode_equals_segment_anythings_decoder_per_image():
    """Our one-pass decoder over all rollouts == SAM's MaskDecoder.forward + postprocess_masks, image by image."""
    tool = make_tool()
    sam = tool.sam
    emb = tool.embed(random_images(3))
    ours = tool.decode(emb, INDEX, BOXES, POINTS, [(128, 128)] * 3)
    transform = ResizeLongestSide(64)
    for j in range(3):
        rows = (INDEX == j).nonzero()[:, 0]
        sparse, dense = sam.prompt_encoder(
            points=(transform.apply_coords_torch(POINTS[rows], (128, 128)), torch.ones(len(rows), 2)),
            boxes=transform.apply_boxes_torch(BOXES[rows], (128, 128)), masks=None)
        low, _ = sam.mask_decoder(emb[j:j + 1], sam.prompt_encoder.get_dense_pe(), sparse, dense,
                                  multimask_output=False)
        theirs = sam.postprocess_masks(low, (64, 64), (128, 128))[:, 0]
        torch.testing.assert_close(ours[rows], theirs, atol=1e-5, rtol=1e-5)


def test_gradients_reach_the_decoder_only_when_trainable_is_decoder():
    tool = make_tool()
    emb = tool.embed(random_images(3))
    tool.decode(emb, INDEX, BOXES, POINTS, [(128, 128)] * 3).sigmoid().mean().backward()
    decoder = tool.sam.mask_decoder
    used = [decoder.mask_tokens.weight, decoder.output_upscaling[0].weight, *decoder.transformer.parameters(),
            *decoder.output_hypernetworks_mlps[0].parameters()]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in used)
    assert all(p.grad is None and not p.requires_grad for p in tool.sam.image_encoder.parameters())
    assert all(p.grad is None and not p.requires_grad for p in tool.sam.prompt_encoder.parameters())
    params = trainable_parameters(tool)
    assert len(params) == len(list(decoder.parameters()))
    assert sum(p.numel() for p in params) == sum(p.numel() for p in decoder.parameters())


def test_trainable_all_trains_the_encoder_but_never_the_fourier_matrix():
    tool = make_tool(trainable="all")
    fourier = tool.sam.state_dict()[FOURIER_MATRIX].clone()
    assert FOURIER_MATRIX not in dict(tool.named_parameters())  # a buffer, not a parameter
    emb = tool.embed(random_images(2))
    assert emb.requires_grad
    opt = torch.optim.Adam(trainable_parameters(tool), lr=1e-2)
    tool.decode(emb, torch.tensor([0, 1]), BOXES[:2], None, [(128, 128)] * 2).mean().backward()
    assert tool.sam.image_encoder.patch_embed.proj.weight.grad.abs().sum() > 0
    assert tool.sam.prompt_encoder.point_embeddings[2].weight.grad.abs().sum() > 0
    opt.step()
    assert torch.equal(tool.sam.state_dict()[FOURIER_MATRIX], fourier)


def test_fourier_matrix_is_standard_normal_as_in_sam():
    tool = load_tool(ToolConfig(preset="vit_b"))
    matrix = tool.sam.prompt_encoder.pe_layer.positional_encoding_gaussian_matrix
    assert matrix.shape == (2, 128) and not matrix.requires_grad
    assert abs(float(matrix.std()) - 1.0) < 0.2 and abs(float(matrix.mean())) < 0.2
    # vit_b is exactly segment_anything's registry architecture: 93,735,472 parameters, the same keys and shapes
    assert sum(p.numel() for p in tool.parameters()) == 93_735_472
    reference = sam_model_registry["vit_b"]().state_dict()
    ours = tool.sam.state_dict()
    assert ours.keys() == reference.keys()
    assert all(ours[k].shape == reference[k].shape for k in ours)


def test_encoder_runs_once_per_image_whatever_the_number_of_rollouts():
    tool = make_tool()
    calls = []
    tool.sam.image_encoder.register_forward_hook(lambda m, args, out: calls.append(args[0].shape[0]))
    emb = tool.embed(random_images(2))
    index = torch.tensor([0] * 8 + [1] * 8)
    boxes = torch.tensor([[10.0, 10, 60, 60]]).repeat(16, 1)
    tool.decode(emb, index, boxes, None, [(128, 128)] * 2)
    tool.decode(emb, index, boxes, None, [(128, 128)] * 2)
    assert calls == [2]


def test_embed_encodes_at_most_encoder_batch_images_at_once_with_the_same_result():
    from grto_lib.tool import ENCODER_BATCH
    assert ENCODER_BATCH["vit_h"] == 2  # SAM ViT-H: about 3.2 GiB of attention activations per 1024 px image
    tool = make_tool()
    calls = []
    tool.sam.image_encoder.register_forward_hook(lambda m, args, out: calls.append(args[0].shape[0]))
    images = random_images(tool.encoder_batch + 2)
    chunked = tool.embed(images)
    assert calls == [tool.encoder_batch, 2]
    torch.testing.assert_close(chunked, tool.embed(images, batch_size=len(images)), rtol=1e-4, atol=1e-5)


def test_boxes_are_mapped_from_image_pixels_like_sams_resize_longest_side():
    tool = make_tool()  # image_size 64
    # 100 x 200 (H x W): longest side 200 -> 64, so x and y scale by 64/200 = 0.32 (SAM rounds 32.0 rows)
    mapped = tool._to_input_frame(torch.tensor([[[100.0, 50.0], [200.0, 100.0]]]), torch.tensor([0]), [(100, 200)])
    torch.testing.assert_close(mapped, torch.tensor([[[32.0, 16.0], [64.0, 32.0]]]))
    # The same embedding read as a 128 px image with box b, or as a 256 px image with box 2b: identical logits
    emb = tool.embed(random_images(1))
    box = torch.tensor([[10.0, 20.0, 70.0, 90.0]])
    small = tool.low_res_logits(emb, torch.tensor([0]), box, None, [(128, 128)])
    large = tool.low_res_logits(emb, torch.tensor([0]), 2 * box, None, [(256, 256)])
    torch.testing.assert_close(small, large)
    shifted = tool.low_res_logits(emb, torch.tensor([0]), box + 30, None, [(128, 128)])
    assert (shifted - small).abs().max() > 1e-3


def test_save_and_load_round_trip_gives_identical_logits(tmp_path):
    tool = make_tool(trainable="all")
    with torch.no_grad():
        for p in tool.parameters():
            p.add_(0.01 * torch.randn_like(p))
    tool.set_trainable("decoder")
    save_tool(tool, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tool.safetensors", "tool_config.json"]
    config = load_tool_config(tmp_path)
    assert config == ToolConfig(image_size=64, checkpoint=str(tmp_path))
    torch.manual_seed(123)  # a different random init, overwritten by the checkpoint
    loaded = load_tool(config)
    images = random_images(2)
    args = (torch.tensor([0, 1, 1]), BOXES[:3], POINTS[:3], [(128, 128)] * 2)
    assert torch.equal(tool.decode(tool.embed(images), *args), loaded.decode(loaded.embed(images), *args))


def test_checkpoints_of_another_architecture_or_missing_raise_clear_errors(tmp_path):
    save_tool(make_tool(), tmp_path / "tiny")
    weights = str(tmp_path / "tiny" / "tool.safetensors")
    # one ViT block more: that block's keys are missing from the file (a raw file carries no config to compare)
    with pytest.raises(ValueError, match=r"\d+ missing keys \[image_encoder\.blocks\.2\..*0 unexpected keys"):
        load_tool(ToolConfig(image_size=64, encoder_depth=3, checkpoint=weights))
    with pytest.raises(ValueError, match=r"0 missing keys.*\d+ unexpected keys \[image_encoder\.blocks\.1\."):
        load_tool(ToolConfig(image_size=64, encoder_depth=1, checkpoint=weights))
    with pytest.raises(ValueError, match=r"another architecture.*'encoder_depth': \(2, 3\)"):
        load_tool(ToolConfig(image_size=64, encoder_depth=3, checkpoint=str(tmp_path / "tiny")))
    with pytest.raises(ValueError, match=r"shape mismatches \[.*file \(1, 8, 8, 64\) vs model \(1, 16, 16, 64\)"):
        load_tool(ToolConfig(image_size=128, checkpoint=weights))
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        load_tool(ToolConfig(checkpoint=str(tmp_path / "nowhere.pth")))
    # a .pth of SAM's format (a plain state dict) loads with weights_only=True; a pickled object does not
    torch.save(make_tool().sam.state_dict(), tmp_path / "sam.pth")
    load_tool(ToolConfig(image_size=64, checkpoint=str(tmp_path / "sam.pth")))
    torch.save({"model": ToolConfig()}, tmp_path / "pickle.pth")
    with pytest.raises(ValueError, match="weights_only=True"):
        load_tool(ToolConfig(image_size=64, checkpoint=str(tmp_path / "pickle.pth")))


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match=r"preset='vit_x'.*'tiny', 'vit_b'"):
        ToolConfig(preset="vit_x")
    with pytest.raises(ValueError, match="trainable='encoder'"):
        ToolConfig(trainable="encoder")
    with pytest.raises(ValueError, match="1024 only"):
        ToolConfig(preset="vit_b", image_size=64)
    with pytest.raises(ValueError, match="multiple of patch_size"):
        ToolConfig(image_size=60)
    tool = make_tool()
    emb = tool.embed(random_images(1))
    with pytest.raises(ValueError, match=r"boxes must have shape \(2, 4\)"):
        tool.decode(emb, torch.tensor([0, 0]), BOXES[:1], None, [(128, 128)])
    with pytest.raises(ValueError, match=r"image_index values must lie in \[0, 1\)"):
        tool.decode(emb, torch.tensor([0, 1]), BOXES[:2], None, [(128, 128)])
    with pytest.raises(ValueError, match="H x W x 3 uint8"):
        tool.embed([np.zeros((8, 8, 3), dtype=np.float32)])


def test_jittered_prompts_stay_in_the_image_and_near_the_box():
    mask = np.zeros((64, 64), dtype=bool)
    mask[10:30, 20:60] = True  # box [20, 10, 60, 30]
    rng = np.random.default_rng(0)
    for _ in range(200):
        box, points, labels = jittered_prompts(mask, rng)
        assert 0 <= box[0] <= box[2] <= 64 and 0 <= box[1] <= box[3] <= 64
        assert np.all(np.abs(box - [20, 10, 60, 30]) <= 20)
        assert points.shape == (2, 2) and mask[int(points[0, 1]), int(points[0, 0])]
        assert set(labels) <= {-1.0, 1.0} and list(labels) == sorted(labels, reverse=True)


def test_augmentations_keep_masks_aligned_with_their_pixels():
    red, grey = (200, 30, 30), 240
    image = np.full((64, 64, 3), grey, dtype=np.uint8)
    mask = np.zeros((64, 64), dtype=bool)
    mask[16:48, 8:40] = True
    image[mask] = red
    rng = np.random.default_rng(0)
    small, (small_mask,) = zoom_out(image, [mask], 0.5, rng)  # nearest: every other row and column
    assert small_mask.sum() == 16 * 16
    assert (small[small_mask] == red).all() and (small[~small_mask] == grey).all()
    cluttered = augment_scene(image, [mask], rng, clutter=1.0, fade=0.0)
    assert (cluttered[mask] == red).all() and (cluttered[~mask] != grey).any()
    faded = augment_scene(image, [mask], rng, clutter=0.0, fade=1.0)
    # one a ~ U(0.35, 0.8) per object: green = a * 30 + (1 - a) * 240 lies in [72, 166.5]
    green = faded[mask][:, 1]
    assert (green == green[0]).all() and 72 <= green[0] <= 167
    assert (faded[~mask] == grey).all()


def test_short_pretraining_reduces_the_loss_and_is_deterministic():
    data = load_dataset("shapes", "train", size=40)
    kwargs = dict(steps=60, warmup=5, batch_size=4, log_every=0, dataset=data, config=ToolConfig(image_size=64))
    tool, log = train_tool_standin(seed=1, **kwargs)
    first, last = np.mean(log["losses"][:5]), np.mean(log["losses"][-5:])
    assert last < 0.8 * first, (first, last)
    assert tool.config.trainable == "decoder" and log["parameters"] == sum(p.numel() for p in tool.parameters())
    short = dict(kwargs, steps=4)
    runs = [train_tool_standin(seed=seed, **short)[1]["losses"] for seed in (1, 1, 2)]
    assert runs[0] == runs[1] and runs[0] != runs[2]


def test_generic_pretraining_scenes_give_disjoint_visible_regions():
    scenes = [generic_scene(np.random.default_rng(seed)) for seed in range(20)]
    for image, masks in scenes:
        assert image.shape == (128, 128, 3) and image.dtype == np.uint8
        assert 1 <= len(masks) <= 5 and all(m.shape == (128, 128) and m.sum() >= 20 for m in masks)
        assert np.sum(masks, axis=0).max() == 1  # visible parts: a pixel belongs to at most one region
    again, _ = generic_scene(np.random.default_rng(0))
    assert (again == scenes[0][0]).all() and not (scenes[1][0] == scenes[0][0]).all()
