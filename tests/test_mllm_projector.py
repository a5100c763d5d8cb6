import pytest
import torch
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig
from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

from cloc_mllm.mllm.projector import (
    ColumnMajorCopy,
    MLPProjector,
    PatchPositionProjector,
    extra_image_tokens,
    is_plain_llava_projector,
    llava_projector_act,
    pin_linear_projector,
    projector_depth,
)


def test_depth_by_llava_names():
    assert [projector_depth(n) for n in ("linear", "mlp1x_gelu", "mlp2x_gelu", "mlp3x_gelu")] == [1, 1, 2, 3]
    assert is_plain_llava_projector("linear") and is_plain_llava_projector("mlp2x_gelu")
    assert not is_plain_llava_projector("mlp3x_gelu")
    for bad in ("mlp2x_relu", "identity", "mlp0x_gelu"):
        with pytest.raises(ValueError, match="unknown mm_projector_type"):
            projector_depth(bad)


def test_pinned_llava_projector_is_one_linear_layer():
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=8, num_attention_heads=2),
        text_config=LlamaConfig(hidden_size=16, num_attention_heads=2, num_key_value_heads=1),
        projector_hidden_act=llava_projector_act("linear"),
    )
    projector = LlavaMultiModalProjector(config)
    pin_linear_projector(projector)
    x = torch.randn(3, 5, 8)
    expected = x @ projector.linear_1.weight.T + projector.linear_1.bias
    assert torch.allclose(projector(x), expected, atol=1e-6)
    assert not projector.linear_2.weight.requires_grad and projector.linear_1.weight.requires_grad


def test_mlp_projector_layers():
    projector = MLPProjector(8, 16, depth=3)
    linears = [m for m in projector.layers if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 3 and projector(torch.randn(2, 4, 8)).shape == (2, 4, 16)


def test_patch_position_projector_marks_each_row_and_column():
    base = MLPProjector(8, 16, depth=2)
    projector = PatchPositionProjector(base, grid=3, hidden_size=16)
    same = torch.randn(1, 1, 8).expand(2, 9, 8)  # one feature at every patch: only the place differs
    tokens = projector(same)  # (2, 9, 16)
    added = (tokens - base(same))[0].reshape(3, 3, 16)
    row, column = projector.row_embed.detach(), projector.column_embed.detach()
    assert torch.allclose(added, row[:, None] + column[None], atol=1e-6)
    assert torch.cdist(tokens[0], tokens[0]).add(torch.eye(9) * 1e3).min() > 0.1  # 9 distinct tokens
    with_cls = projector(torch.randn(2, 10, 8))  # CLS first: no position, then the grid in raster order
    assert with_cls.shape == (2, 10, 16)
    with pytest.raises(ValueError, match="3x3 grid"):
        projector(torch.randn(2, 8, 8))
    tokens.sum().backward()
    assert projector.column_embed.grad is not None and projector.row_embed.grad.abs().sum() > 0


def test_token_scaled_patch_position_keeps_its_share_of_the_token_whatever_the_projector_scale():
    base = torch.nn.Linear(8, 16, bias=False)  # homogeneous: features x 100 -> tokens x 100
    unit = PatchPositionProjector(base, grid=3, hidden_size=16)
    token = PatchPositionProjector(base, grid=3, hidden_size=16, scale="token")
    features = torch.randn(2, 9, 8)
    projected = base(features)
    rms = projected.pow(2).mean(-1, keepdim=True).sqrt()  # (2, 9, 1)
    place = (token.row_embed[:, None] + token.column_embed[None]).flatten(0, 1)  # (9, 16)
    assert torch.allclose(token(features), projected + rms * place, atol=1e-5)
    assert torch.allclose(token(100 * features), 100 * token(features), rtol=1e-4, atol=1e-3)  # the same share
    assert not torch.allclose(unit(100 * features), 100 * unit(features), rtol=1e-4, atol=1e-3)
    share = (token(features) - projected).norm(dim=-1) / projected.norm(dim=-1)
    assert 0.5 < share.mean() < 2.0  # starts at about the content's norm; "unit" at about 1 / |token|
    with pytest.raises(ValueError, match="patch position scale"):
        PatchPositionProjector(base, grid=3, hidden_size=16, scale="norm")


def test_column_major_copy_follows_the_raster_tokens_with_each_column_in_turn():
    projector = ColumnMajorCopy(torch.nn.Identity(), grid=3)
    square = torch.arange(9.0)[None, :, None].expand(2, 9, 4)  # (2, 9, 4), a 3x3 grid
    tokens = projector(square)
    assert tokens.shape == (2, 18, 4)
    assert tokens[0, :9, 0].tolist() == list(range(9))  # raster order first
    assert tokens[0, 9:, 0].tolist() == [0, 3, 6, 1, 4, 7, 2, 5, 8]  # then column by column
    with_cls = projector(torch.cat([torch.full((2, 1, 4), -1.0), square], dim=1))  # CLS first, not repeated
    assert with_cls.shape == (2, 19, 4) and with_cls[0, 10:, 0].tolist() == [0, 3, 6, 1, 4, 7, 2, 5, 8]
    with pytest.raises(ValueError, match="3x3 grid"):
        projector(torch.zeros(2, 6, 4))  # 6 tokens are no 3x3 grid
    assert extra_image_tokens("row", 3) == 0 and extra_image_tokens("row_column", 3) == 9
    with pytest.raises(ValueError, match="patch order"):
        extra_image_tokens("column", 3)
