import numpy as np
import pytest

from direct_nextaccel.benchmark.figures import (
    GridLayout,
    check_zoom_box,
    colormap,
    comparison_figure,
    default_zoom_box,
    panel_shape,
)


@pytest.fixture
def slices():
    """A 40 x 48 target with a bright square, a blurred and a noisy reconstruction, and an uncertainty map."""
    rng = np.random.default_rng(0)
    target = np.zeros((40, 48))
    target[10:30, 12:36] = 1.0
    blurred = (target + np.roll(target, 1, 0) + np.roll(target, 1, 1)) / 3
    noisy = target + 0.05 * rng.standard_normal(target.shape)
    uncertainty = rng.random(target.shape)
    return target, {"zero-filled": blurred, "model": noisy}, {"model": uncertainty}


def test_figure_has_one_column_per_image_and_uncertainty(slices):
    target, reconstructions, uncertainties = slices
    figure = comparison_figure(target, reconstructions, data_range=1.0, uncertainties=uncertainties, title="t")
    panel = panel_shape(target.shape)
    assert panel == (160, 192)  # factor 4 reaches 160 pixels on the longer side
    layout = GridLayout(columns=4, panel=panel)  # target, 2 reconstructions, 1 uncertainty
    assert figure.size == layout.size
    assert figure.mode == "RGB"

    pixels = np.asarray(figure)
    height, width = panel
    first_row = [pixels[y : y + height, x : x + width] for x, y in (layout.origin(0, c) for c in range(4))]
    x, y = layout.origin(0, 0)
    # Grey target panel: the square's centre pixel is white, the corner black, enlarged by nearest neighbour.
    assert tuple(pixels[y + 20 * 4, x + 24 * 4]) == (255, 255, 255)
    assert tuple(pixels[y + 2, x + 2]) == (0, 0, 0)
    # The uncertainty column is in colour, the image columns are grey.
    assert np.ptp(first_row[3].astype(int), axis=-1).max() > 50
    # Error row: the noisy reconstruction's error map is not that of the blurred one.
    errors = [pixels[y : y + height, x : x + width] for x, y in (layout.origin(2, c) for c in (1, 2))]
    assert not np.array_equal(errors[0], errors[1])


def test_zoom_row_enlarges_the_box_by_nearest_neighbour(slices):
    target, reconstructions, _ = slices
    box = (8, 12, 4, 6)  # two black rows above the square's edge, two white rows of it
    figure = np.asarray(comparison_figure(target, reconstructions, data_range=1.0, zoom_box=box))
    layout = GridLayout(columns=3, panel=panel_shape(target.shape))
    x, y = layout.origin(1, 0)
    zoom = figure[y : y + layout.panel[0], x : x + layout.panel[1], 0]
    # 4 x 6 pixels enlarged 32 times (192 wide) and centred vertically in the 160-pixel panel: rows 16..143.
    assert (zoom[16:80] == 0).all() and (zoom[80:144] == 255).all()
    assert (zoom[:16] == 255).all()  # white background above


def test_default_zoom_box_is_the_centre_quarter():
    assert default_zoom_box((40, 48)) == (10, 12, 20, 24)


def test_bad_zoom_box_and_shapes_are_one_line_errors(slices):
    target = slices[0]
    with pytest.raises(ValueError, match=r"zoom box \(30, 0, 20, 10\) .* is not inside the image \(40, 48\)"):
        check_zoom_box((30, 0, 20, 10), (40, 48))
    with pytest.raises(ValueError, match=r"model: image shape \(40, 47\) differs from the target's \(40, 48\)"):
        comparison_figure(target, {"model": target[:, :-1]}, data_range=1.0)


def test_colormap_runs_from_dark_to_light():
    rgb = colormap(np.array([[0.0, 0.5, 1.0, 2.0]]), vmax=1.0)
    assert tuple(rgb[0, 0]) == (0, 0, 4)
    assert tuple(rgb[0, 2]) == tuple(rgb[0, 3]) == (252, 255, 164)
    assert rgb[0, 0].sum() < rgb[0, 1].sum() < rgb[0, 2].sum()
