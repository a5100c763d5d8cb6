import math
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from cloc_mllm import CLOCModel, losses
from cloc_mllm.losses import CLOCLoss, grounding_loss, grounding_map_loss, infonce_loss, siglip_loss
from cloc_mllm.training.distributed import free_port

from .conftest import random_batch


def test_infonce_hand_computed():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    scale = torch.tensor(0.0)  # exp(0) = 1
    loss = infonce_loss(a, a, a, a, scale, offset=0)
    # Each row: -log(e^1 / (e^1 + e^0)), both directions, mean over 2 rows.
    assert loss.item() == pytest.approx(-math.log(math.e / (math.e + 1)))


def test_duplicate_caption_negatives_are_ignored():
    regions = F.normalize(torch.tensor([[1.0, 0.2], [1.0, 0.1], [0.0, 1.0]]), dim=-1)
    texts = F.normalize(
        torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]), dim=-1
    )  # captions 0 and 1 identical
    loss_fn = CLOCLoss(text_similarity_threshold=0.9)
    filtered = loss_fn.region_term(regions, texts, torch.tensor(0.0))
    ignore = torch.zeros(3, 3, dtype=torch.bool)
    ignore[0, 1] = ignore[1, 0] = True
    expected = infonce_loss(regions, texts, regions, texts, torch.tensor(0.0), 0, ignore)
    unfiltered = infonce_loss(regions, texts, regions, texts, torch.tensor(0.0), 0)
    assert filtered.item() == pytest.approx(expected.item())
    assert filtered.item() < unfiltered.item()


def test_siglip_hand_computed():
    img = torch.tensor([[1.0, 0.0]])
    txt = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    loss = siglip_loss(img, txt, torch.tensor(0.0), torch.tensor(0.0), offset=0)
    expected = -(F.logsigmoid(torch.tensor(1.0)) + F.logsigmoid(torch.tensor(0.0))) / 2
    assert loss.item() == pytest.approx(expected.item())


def test_grounding_losses():
    pred = torch.tensor([[0.0, 0.0, 0.5, 0.5]])
    target = torch.tensor([[0.0, 0.0, 0.5, 1.0]])
    # centre y differs by 0.25, height by 0.5 -> 0.0625 + 0.25
    assert grounding_loss(pred, target, "l2").item() == pytest.approx(0.3125)
    assert grounding_loss(pred, target, "l1").item() == pytest.approx(0.5)
    assert grounding_loss(pred, target, "giou").item() == pytest.approx(0.5 + 0.5)


def test_grounding_map_loss_rewards_mass_on_the_target_patches():
    coverage = torch.tensor([[1.0, 1.0, 0.0, 0.0]])  # the box covers patches 0 and 1
    uniform = grounding_map_loss(torch.zeros(1, 4), coverage)
    assert uniform.item() == pytest.approx(math.log(4))  # -(0.5 log 1/4) x 2
    on_target = grounding_map_loss(torch.tensor([[5.0, 5.0, -5.0, -5.0]]), coverage)
    off_target = grounding_map_loss(torch.tensor([[-5.0, -5.0, 5.0, 5.0]]), coverage)
    assert on_target.item() == pytest.approx(math.log(2), abs=1e-3)  # the target's own entropy
    assert off_target.item() > uniform.item() > on_target.item()


def _rank_worker(rank, world, port, config, batch, result_path):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = CLOCModel(config)
    per_rank = batch["pixel_values"].shape[0] // world
    local = {k: v[rank * per_rank : (rank + 1) * per_rank] for k, v in batch.items()}
    count_exchanges = []  # the dtype of every all_gather without gradients
    real_gather = losses.gather_no_grad
    losses.gather_no_grad = lambda tensor: count_exchanges.append(tensor.dtype) or real_gather(tensor)
    out = model(**local, return_loss=True)
    losses.gather_no_grad = real_gather
    out.loss.backward()
    # What DDP does: average the loss for logging and the gradients for the update.
    values = torch.stack([t.detach() for t in _terms(out)])
    dist.all_reduce(values)
    grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    dist.all_reduce(grads)
    if rank == 0:
        integer_exchanges = sum(not dtype.is_floating_point for dtype in count_exchanges)
        torch.save({"losses": values / world, "grads": grads / world, "count_exchanges": integer_exchanges}, result_path)
    dist.destroy_process_group()


def _terms(out) -> list:
    return [t for t in (out.loss, out.loss_clip, out.loss_region, out.loss_ground) if t is not None]


@pytest.mark.parametrize(
    ("contrastive", "loss_mode"), [("infonce", "cloc"), ("siglip", "cloc"), ("infonce", "clip_phrases")]
)
def test_two_process_loss_and_gradients_equal_single_process(tiny_config, tmp_path, contrastive, loss_mode):
    config = tiny_config.__class__.from_dict(
        {**tiny_config.to_dict(), "contrastive_loss": contrastive, "loss_mode": loss_mode}
    )
    batch = random_batch(config, batch_size=6, num_regions=3, seed=1)
    batch["region_mask"][1, 1:] = False  # ranks hold different numbers of regions
    batch["region_mask"][4] = False
    batch["region_input_ids"][2, 0] = batch["region_input_ids"][5, 2]  # a duplicate caption across ranks
    torch.manual_seed(0)
    model = CLOCModel(config)
    out = model(**batch, return_loss=True)
    out.loss.backward()
    single_grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    single = torch.stack(_terms(out)).detach()

    result = tmp_path / "dist.pt"
    mp.spawn(_rank_worker, args=(2, free_port(), config, batch, result), nprocs=2, join=True)
    got = torch.load(result)
    assert torch.allclose(got["losses"], single, atol=1e-5), (got["losses"], single)
    assert got["grads"].shape == single_grads.shape
    assert torch.allclose(got["grads"], single_grads, atol=1e-5, rtol=1e-4)
    # the step's row counts are gathered once, for every term (the control also gathers its phrases' image rows)
    assert got["count_exchanges"] == (2 if loss_mode == "clip_phrases" else 1)


def test_token_signatures_filter_duplicates_from_the_first_step():
    from cloc_mllm.losses import token_signatures

    special = torch.tensor([0, 2, 3])
    ids = torch.tensor([[2, 10, 11, 3, 0], [2, 10, 11, 3, 0], [2, 12, 11, 3, 0], [2, 10, 11, 13, 3]])
    sig = token_signatures(ids, (ids != 0).long(), special)
    sim = sig @ sig.t()
    assert sim[0, 1].item() == pytest.approx(1.0)  # identical captions
    assert sim[0, 2].item() == pytest.approx(0.5)  # one shared word of two
    assert sim[0, 3].item() < 0.9  # "red circle" vs "red circle x" stays a negative
    # Nearly identical embeddings (an untrained tower) would drop every negative; signatures do not.
    regions = F.normalize(torch.randn(4, 8, generator=torch.Generator().manual_seed(0)), dim=-1)
    texts = F.normalize(
        torch.ones(4, 8) + 0.01 * torch.randn(4, 8, generator=torch.Generator().manual_seed(1)), dim=-1
    )
    loss_fn = CLOCLoss()
    assert loss_fn.region_term(regions, texts, torch.tensor(0.0)).item() == pytest.approx(0.0, abs=1e-6)
    assert loss_fn.region_term(regions, texts, torch.tensor(0.0), sig).item() > 0.1


def test_phrase_image_term_hand_computed_with_shared_phrases_not_negatives():
    """The equal-supervision control: phrases as extra texts of their whole image."""
    images = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), dim=-1)
    phrases = F.normalize(torch.tensor([[1.0, 1.0], [1.0, 0.0], [0.0, 1.0]]), dim=-1)
    owners = torch.tensor([0, 0, 1])
    # phrases 0 and 2 are the same words ("red circle") on images 0 and 1; phrase 1 is image 0's alone
    signatures = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    loss = CLOCLoss().phrase_image_term(phrases, owners, images, torch.tensor(0.0), signatures)
    # phrases 0 and 2 keep only their positive (loss 0); phrase 1: -log softmax([1, 0])[0]
    assert loss.item() == pytest.approx(-math.log(math.e / (math.e + 1)) / 3)
    distinct = torch.eye(3)  # every phrase its own words: both images are negatives of each
    assert CLOCLoss().phrase_image_term(phrases, owners, images, torch.tensor(0.0), distinct) > loss


def test_clip_phrases_mode_adds_the_phrase_term_and_trains_no_region_head(tiny_config):
    from cloc_mllm.training.model import freeze_unused_parameters

    batch = random_batch(tiny_config, batch_size=4, num_regions=3, seed=2)
    losses = {}
    for mode in ("clip", "clip_phrases"):
        torch.manual_seed(0)
        model = CLOCModel(tiny_config.__class__.from_dict({**tiny_config.to_dict(), "loss_mode": mode}))
        out = model(**batch, return_loss=True)
        losses[mode] = out
    torch.testing.assert_close(losses["clip"].loss_clip, losses["clip_phrases"].loss_clip)
    out = losses["clip_phrases"]
    assert out.loss_region > 0 and out.loss_ground is None and out.region_embeds is None
    torch.testing.assert_close(out.loss, out.loss_clip + out.region_weight * out.loss_region)
    assert model.prompter is None and model.roialign_head is None  # no region head is even built
    frozen = freeze_unused_parameters(model)
    # the phrase term uses the image-text temperature; the SigLIP bias is unused under InfoNCE
    assert set(frozen) == {"region_logit_scale", "logit_bias"}
