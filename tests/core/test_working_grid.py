"""The map between DIRECT's matrix and a model's working size (``core.images.WorkingGrid``, ``fourier_resample``)."""

from __future__ import annotations

import pytest
import torch
from direct.data.transforms import center_crop, fft2, ifft2

from direct_nextaccel.core.images import WorkingGrid, center_crop_or_pad, fourier_resample


def band_limited(shape: tuple[int, int], band: tuple[int, int], batch: int = 2, seed: int = 0) -> torch.Tensor:
    """Random complex images (batch, 2, H, W) (real/imaginary channels) whose centred spectrum is zero outside the
    central ``band`` less its Nyquist row and column, so a grid of that size holds them exactly."""
    generator = torch.Generator().manual_seed(seed)
    spectrum = torch.zeros(batch, *shape, 2, dtype=torch.float64)
    top, left = shape[0] // 2 - band[0] // 2 + 1, shape[1] // 2 - band[1] // 2 + 1
    spectrum[:, top : top + band[0] - 1, left : left + band[1] - 1] = torch.randn(
        batch, band[0] - 1, band[1] - 1, 2, generator=generator, dtype=torch.float64
    )
    return ifft2(spectrum.float(), dim=(1, 2)).permute(0, 3, 1, 2).double()  # B, 2, H, W


def test_identity_when_matrix_region_and_working_size_agree():
    """The tiny configs' path (64 x 64 data, 64 x 64 model): both directions return the very tensor they get."""
    image = torch.randn(2, 6, 2, 64, 64)
    for data in ({}, {"reconstruction_size": [torch.tensor([64, 64]), torch.tensor([64, 64]), torch.tensor([1, 1])]}):
        grid = WorkingGrid.of_batch(data, (64, 64), (64, 64))
        assert grid.is_identity
        assert grid.to_working(image) is image and grid.from_working(image) is image
    assert fourier_resample(image, (64, 64)) is image


def test_of_batch_reads_directs_reconstruction_size():
    matrix, working = (640, 320), (256, 256)
    collated = [torch.tensor([320, 320]), torch.tensor([320, 320]), torch.tensor([1, 1])]  # DIRECT's default_collate
    assert WorkingGrid.of_batch({"reconstruction_size": collated}, matrix, working).region == (320, 320)
    assert WorkingGrid.of_batch({"reconstruction_size": (320, 320, 1)}, matrix, working).region == (320, 320)
    assert WorkingGrid.of_batch({"reconstruction_size": torch.tensor([[320, 320, 1]])}, matrix, working).region == (
        320,
        320,
    )
    listed = [(320, 320, 1), (320, 320, 1)]  # a batch of samples collated by hand
    assert WorkingGrid.of_batch({"reconstruction_size": listed}, matrix, working).region == (320, 320)
    assert WorkingGrid.of_batch({}, matrix, working).region == matrix  # no header: the whole matrix
    # A header larger than a matrix DIRECT's transforms have cropped is clipped to the matrix.
    assert WorkingGrid.of_batch({"reconstruction_size": (320, 320, 1)}, (256, 256), working).region == (256, 256)
    mixed = [torch.tensor([320, 384]), torch.tensor([320, 384]), torch.tensor([1, 1])]
    with pytest.raises(ValueError, match=r"different reconstruction sizes \[\(320, 320\), \(384, 384\)\]"):
        WorkingGrid.of_batch({"reconstruction_size": mixed}, (768, 396), working)


def test_readout_oversampling_is_cropped_like_directs_crop_header():
    """With the working size equal to the reconstruction size the map is DIRECT's centre crop and its zero padding."""
    grid = WorkingGrid((640, 320), (320, 320), (320, 320))
    image = torch.randn(2, 2, 640, 320)
    working = grid.to_working(image)
    assert torch.equal(working, center_crop(image, (320, 320)))
    back = grid.from_working(working)
    assert torch.equal(center_crop(back, (320, 320)), working)
    assert not back[..., :160, :].any() and not back[..., 480:, :].any()


@pytest.mark.parametrize(
    ("matrix", "region", "working", "band"),
    [
        ((640, 320), (320, 320), (256, 256), (256, 256)),  # fastMRI brain to the paper's working size
        ((640, 320), (320, 320), (64, 64), (64, 64)),  # ... and to the tiny configs'
        ((64, 64), (64, 64), (96, 80), (64, 64)),  # a working grid larger than the matrix (zero-padded spectrum)
        ((75, 61), (75, 61), (32, 33), (32, 33)),  # odd sizes
    ],
)
def test_round_trip_reproduces_a_band_limited_image(matrix, region, working, band):
    grid = WorkingGrid(matrix, region, working)
    inside = band_limited(region, band)
    image = center_crop_or_pad(inside, matrix)  # anatomy in the reconstruction region, zeros in the oversampling
    working_image = grid.to_working(image)
    assert working_image.shape == (2, 2, *working)
    back = grid.from_working(working_image)
    assert back.shape == image.shape
    torch.testing.assert_close(back, image, rtol=0, atol=1e-6 * float(image.abs().max()))
    # From the smaller grid to the larger and back is exact for every image.
    if working[0] <= region[0] and working[1] <= region[1]:
        anything = torch.randn(3, *working, dtype=torch.float64)
        torch.testing.assert_close(grid.to_working(grid.from_working(anything)), anything, rtol=0, atol=1e-12)
    else:
        anything = center_crop_or_pad(torch.randn(3, *region, dtype=torch.float64), matrix)
        torch.testing.assert_close(grid.from_working(grid.to_working(anything)), anything, rtol=0, atol=1e-12)


def test_to_working_is_the_image_of_the_central_kspace_samples():
    """Fourier resampling = cropping the image's centred k-space (DIRECT's fft2 convention), pixel scale kept."""
    image = band_limited((320, 320), (320, 320), seed=1).float()  # any image: full band
    kspace = fft2(image.permute(0, 2, 3, 1).contiguous(), dim=(1, 2))  # B, H, W, 2
    central = kspace[:, 160 - 32 : 160 + 32, 160 - 32 : 160 + 32].clone()
    central[:, 0] = 0  # the two Nyquist lines are summed with their mirror by the map: leave them out here
    central[:, :, 0] = 0
    full = torch.zeros_like(kspace)
    full[:, 160 - 32 : 160 + 32, 160 - 32 : 160 + 32] = central
    image = ifft2(full, dim=(1, 2)).permute(0, 3, 1, 2)  # B, 2, 320, 320
    expected = ifft2(central, dim=(1, 2)).permute(0, 3, 1, 2) * (64 / 320)  # orthonormal FFTs: sqrt(n / N) per axis
    torch.testing.assert_close(fourier_resample(image, (64, 64)), expected, rtol=0, atol=1e-5)


def test_resampling_keeps_intensity_and_real_images_real():
    constant = torch.full((1, 320, 320), 2.5)
    for size in ((256, 256), (64, 64), (400, 333)):
        torch.testing.assert_close(fourier_resample(constant, size), torch.full((1, *size), 2.5))
    # Channels are resampled independently: the map of a complex image is the map of its real and imaginary parts.
    image = torch.randn(2, 2, 50, 40, dtype=torch.float64)
    both = fourier_resample(image, (32, 31))
    torch.testing.assert_close(both[:, 0], fourier_resample(image[:, 0], (32, 31)))
    assert fourier_resample(image.to(torch.bfloat16), (32, 31)).dtype == torch.bfloat16


def test_from_working_is_zero_outside_the_reconstruction_region_and_gradients_flow():
    grid = WorkingGrid((640, 320), (320, 320), (64, 64))
    working = torch.randn(2, 2, 64, 64, requires_grad=True)
    output = grid.from_working(working)
    assert output.shape == (2, 2, 640, 320)
    assert not output[..., :160, :].any() and not output[..., 480:, :].any()
    assert output[..., 160:480, :].abs().amin(dim=-1).gt(0).float().mean() > 0.99  # the whole region is filled
    output.square().sum().backward()
    assert working.grad is not None and torch.isfinite(working.grad).all()


def test_wrong_sizes_are_refused():
    grid = WorkingGrid((640, 320), (320, 320), (64, 64))
    with pytest.raises(ValueError, match=r"to_working expects \(\.\.\., 640, 320\), got \(2, 64, 64\)"):
        grid.to_working(torch.zeros(2, 64, 64))
    with pytest.raises(ValueError, match=r"from_working expects \(\.\.\., 64, 64\)"):
        grid.from_working(torch.zeros(2, 640, 320))
    with pytest.raises(ValueError, match=r"region \(320, 400\) exceeds the matrix \(640, 320\)"):
        WorkingGrid((640, 320), (320, 400), (64, 64))
    with pytest.raises(TypeError, match="real tensors"):
        fourier_resample(torch.zeros(4, 4, dtype=torch.complex64), (2, 2))
