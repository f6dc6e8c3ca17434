"""The pixel decoder: output shapes for the sizes the datasets have, gradients reach every
parameter, and it can fit a tiny batch."""

from __future__ import annotations

import pytest
import torch

from fewlabels.models.decoder import PixelDecoder, decoder_layout


@pytest.mark.parametrize(("image_size", "layout"),
                         [(28, (7, 2)), (32, (4, 3)), (96, (6, 4)), (64, (4, 4)), (8, (4, 1)),
                          (5, (5, 0)), (25, (4, 3))])
def test_layout_halves_the_side_while_it_stays_even(image_size, layout):
    assert decoder_layout(image_size) == layout


@pytest.mark.parametrize("image_size", [28, 32, 96, 25])
def test_output_shape(image_size):
    decoder = PixelDecoder(feature_dim=16, out_channels=3, image_size=image_size, width=8)
    out = decoder(torch.randn(4, 16))
    assert out.shape == (4, 3, image_size, image_size)
    assert torch.isfinite(out).all()


def test_output_is_linear_not_squashed():
    """The last layer has no activation: outputs take both signs and are not bounded to [0, 1]."""
    torch.manual_seed(0)
    decoder = PixelDecoder(feature_dim=16, out_channels=2, image_size=28, width=8)
    out = decoder(torch.randn(8, 16))
    assert (out < 0).any() and (out > 0).any()
    assert isinstance(decoder.output, torch.nn.Conv2d) and decoder.output.bias is not None


def test_gradients_reach_every_parameter_and_the_features():
    torch.manual_seed(0)
    decoder = PixelDecoder(feature_dim=16, out_channels=1, image_size=28, width=8)
    features = torch.randn(4, 16, requires_grad=True)
    decoder(features).square().mean().backward()
    assert features.grad is not None and features.grad.abs().sum() > 0
    for name, parameter in decoder.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_fits_a_tiny_batch():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # ops this small spend more time synchronising threads than working
    try:
        torch.manual_seed(0)
        decoder = PixelDecoder(feature_dim=16, out_channels=1, image_size=14, width=8)
        features, targets = torch.randn(8, 16), torch.randn(8, 1, 14, 14)
        optimizer = torch.optim.Adam(decoder.parameters(), lr=1e-2)
        losses = []
        for _ in range(60):
            loss = (decoder(features) - targets).square().mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    finally:
        torch.set_num_threads(threads)
    assert losses[-1] < 0.5 * losses[0]
