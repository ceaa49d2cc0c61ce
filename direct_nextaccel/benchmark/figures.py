"""Qualitative comparison grids like the paper's Figures 6-8, drawn with Pillow.

One figure shows one slice. Columns: the target, then each reconstruction (the zero-filled reference first), then
one column per model that saved an uncertainty map. Rows:

1. the image, grey levels from 0 to the target volume's maximum (the fastMRI data range), with the zoom box outlined
   and the slice's PSNR / SSIM (same data range) written on each reconstruction;
2. the zoom box, enlarged with nearest-neighbour sampling so no detail is invented;
3. ``|reconstruction - target|`` on one colour scale shared by every column (0 to the largest 99th percentile of the
   errors), whose colour bar sits under the target. An uncertainty column shows the map and its zoom on its own
   scale (0 to its maximum) and its colour bar in the third row.
"""

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from direct_nextaccel.metrics import psnr, ssim

# Anchors of matplotlib's "inferno" colour map (perceptually uniform, readable in grey), linearly interpolated.
_INFERNO = np.array(
    [
        [0, 0, 4],
        [40, 11, 84],
        [101, 21, 110],
        [159, 42, 99],
        [212, 72, 66],
        [245, 125, 21],
        [250, 193, 39],
        [252, 255, 164],
    ],
    dtype=np.float64,
)
_ZOOM_OUTLINE = (255, 196, 0)
_BACKGROUND = (255, 255, 255)
_TEXT = (0, 0, 0)
ROW_LABELS = ("image", "zoom", "|error|")


@dataclass(frozen=True)
class GridLayout:
    """Pixel geometry of a comparison grid: ``columns`` panels of ``panel`` = (height, width) in three rows.

    Attributes
    ----------
    columns : int
        Number of panel columns.
    panel : tuple[int, int]
        ``(height, width)`` of one panel in pixels.
    margin, gap, label_width, title_height, header_height : int
        Outer margin, space between panels, width of the row labels, height of the figure title and of the column
        titles.
    """

    columns: int
    panel: tuple[int, int]
    margin: int = 8
    gap: int = 4
    label_width: int = 56
    title_height: int = 22
    header_height: int = 20

    @property
    def size(self) -> tuple[int, int]:
        """``(width, height)`` of the whole figure."""
        height, width = self.panel
        total_width = 2 * self.margin + self.label_width + self.columns * width + (self.columns - 1) * self.gap
        total_height = 2 * self.margin + self.title_height + self.header_height + 3 * height + 2 * self.gap
        return total_width, total_height

    def origin(self, row: int, column: int) -> tuple[int, int]:
        """``(x, y)`` of the top-left corner of a panel."""
        height, width = self.panel
        x = self.margin + self.label_width + column * (width + self.gap)
        y = self.margin + self.title_height + self.header_height + row * (height + self.gap)
        return x, y


def default_zoom_box(shape: Sequence[int]) -> tuple[int, int, int, int]:
    """The centre quarter of an ``(H, W)`` image: ``(top, left, height, width)`` = ``(H/4, W/4, H/2, W/2)``."""
    height, width = int(shape[-2]), int(shape[-1])
    return height // 4, width // 4, max(1, height // 2), max(1, width // 2)


def check_zoom_box(box: Sequence[int], shape: Sequence[int]) -> tuple[int, int, int, int]:
    """``box`` = (top, left, height, width) as ints if it lies inside an ``(H, W)`` image, else a ValueError."""
    if len(box) != 4:
        raise ValueError(f"zoom box {tuple(box)} is not (top, left, height, width)")
    top, left, height, width = (int(value) for value in box)
    if top < 0 or left < 0 or height < 1 or width < 1 or top + height > shape[-2] or left + width > shape[-1]:
        raise ValueError(f"zoom box {tuple(box)} (top, left, height, width) is not inside the image {tuple(shape)}")
    return top, left, height, width


def colormap(values: np.ndarray, vmax: float) -> np.ndarray:
    """RGB ``uint8`` (H, W, 3) of ``values`` (H, W) mapped from [0, vmax] through the inferno colour map."""
    scaled = np.clip(np.nan_to_num(values / vmax if vmax > 0 else values * 0.0), 0.0, 1.0) * (len(_INFERNO) - 1)
    low = np.floor(scaled).astype(int).clip(0, len(_INFERNO) - 2)
    weight = (scaled - low)[..., None]
    return np.round(_INFERNO[low] * (1 - weight) + _INFERNO[low + 1] * weight).astype(np.uint8)


def grey(image: np.ndarray, vmax: float) -> np.ndarray:
    """RGB ``uint8`` (H, W, 3) of a magnitude image shown from 0 (black) to ``vmax`` (white)."""
    level = np.round(np.clip(np.nan_to_num(image / vmax if vmax > 0 else image * 0.0), 0.0, 1.0) * 255)
    return np.repeat(level.astype(np.uint8)[..., None], 3, axis=-1)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def _fit(rgb: np.ndarray, panel: tuple[int, int]) -> Image.Image:
    """``rgb`` enlarged by nearest neighbour as much as fits in ``panel`` (aspect kept), centred on white."""
    height, width = rgb.shape[:2]
    scale = min(panel[0] / height, panel[1] / width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    image = Image.fromarray(rgb).resize(size, Image.Resampling.NEAREST)
    canvas = Image.new("RGB", (panel[1], panel[0]), _BACKGROUND)
    canvas.paste(image, ((panel[1] - size[0]) // 2, (panel[0] - size[1]) // 2))
    return canvas


def _crop(array: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    top, left, height, width = box
    return array[top : top + height, left : left + width]


def _caption(draw: ImageDraw.ImageDraw, xy: tuple[int, int], text: str, font: ImageFont.ImageFont) -> None:
    """White text on a black box, readable on any image."""
    left, top, right, bottom = draw.textbbox(xy, text, font=font)
    draw.rectangle((left - 2, top - 1, right + 2, bottom + 1), fill=(0, 0, 0))
    draw.text(xy, text, fill=(255, 255, 255), font=font)


def _colour_bar(panel: tuple[int, int], vmax: float, label: str, font: ImageFont.ImageFont) -> Image.Image:
    """A horizontal colour bar from 0 to ``vmax`` with its label, filling one panel."""
    canvas = Image.new("RGB", (panel[1], panel[0]), _BACKGROUND)
    bar_height = max(4, panel[0] // 8)
    ramp = colormap(np.tile(np.linspace(0.0, 1.0, max(2, panel[1] - 8)), (bar_height, 1)), 1.0)
    top = panel[0] // 2 - bar_height // 2
    canvas.paste(Image.fromarray(ramp), (4, top))
    draw = ImageDraw.Draw(canvas)
    draw.text((4, top - 16), label, fill=_TEXT, font=font)
    draw.text((4, top + bar_height + 2), "0", fill=_TEXT, font=font)
    maximum = f"{vmax:.3g}"
    draw.text(
        (panel[1] - 4 - draw.textlength(maximum, font=font), top + bar_height + 2), maximum, fill=_TEXT, font=font
    )
    return canvas


def _slice_scores(target: np.ndarray, image: np.ndarray, data_range: float) -> str:
    """``"<PSNR> dB / <SSIM>"`` of one slice with the volume's data range."""
    with np.errstate(divide="ignore"):  # an exact reconstruction has PSNR inf
        value = psnr(target[None], image[None], data_range=data_range)
    similarity = ssim(target[None], image[None], data_range=data_range)
    return f"{'inf' if math.isinf(value) else f'{value:.2f}'} dB / {similarity:.3f}"


def panel_shape(image_shape: Sequence[int], minimum: int = 160) -> tuple[int, int]:
    """``(height, width)`` of a panel: the image enlarged by the smallest integer factor reaching ``minimum`` pixels
    on its longer side (factor 1 for images at least that large)."""
    height, width = int(image_shape[-2]), int(image_shape[-1])
    factor = max(1, math.ceil(minimum / max(height, width)))
    return height * factor, width * factor


def comparison_figure(
    target: np.ndarray,
    reconstructions: Mapping[str, np.ndarray],
    *,
    data_range: float,
    uncertainties: Mapping[str, np.ndarray] | None = None,
    zoom_box: Sequence[int] | None = None,
    title: str = "",
) -> Image.Image:
    """Draw the grid described in the module docstring.

    Parameters
    ----------
    target : np.ndarray
        Reference magnitude slice (H, W).
    reconstructions : Mapping[str, np.ndarray]
        Column title -> magnitude slice (H, W), in column order.
    data_range : float
        Grey-level maximum and PSNR/SSIM data range: the maximum of the target *volume* (fastMRI convention).
    uncertainties : Mapping[str, np.ndarray], optional
        Model name -> uncertainty map (H, W), one extra column each.
    zoom_box : sequence of 4 ints, optional
        ``(top, left, height, width)`` in image pixels; default :func:`default_zoom_box`.
    title : str
        Line above the grid.

    Returns
    -------
    PIL.Image.Image
        RGB figure of size ``GridLayout(columns, panel_shape(target.shape)).size``.
    """
    target = np.asarray(target, dtype=np.float64)
    if target.ndim != 2:
        raise ValueError(f"target must be one slice (H, W), got shape {target.shape}")
    uncertainties = dict(uncertainties or {})
    for name, image in [*reconstructions.items(), *uncertainties.items()]:
        if np.shape(image) != target.shape:
            raise ValueError(f"{name}: image shape {np.shape(image)} differs from the target's {target.shape}")
    if not data_range > 0:
        raise ValueError(f"data_range {data_range} must be positive")
    box = default_zoom_box(target.shape) if zoom_box is None else check_zoom_box(zoom_box, target.shape)

    columns = [("target", target), *((name, np.asarray(image, np.float64)) for name, image in reconstructions.items())]
    errors = {name: np.abs(image - target) for name, image in columns[1:]}
    error_max = max((float(np.percentile(error, 99)) for error in errors.values()), default=0.0)
    error_max = error_max if error_max > 0 else data_range * 1e-6
    layout = GridLayout(columns=len(columns) + len(uncertainties), panel=panel_shape(target.shape))
    figure = Image.new("RGB", layout.size, _BACKGROUND)
    draw = ImageDraw.Draw(figure)
    font, small = _font(13), _font(11)
    draw.text((layout.margin, layout.margin), title, fill=_TEXT, font=font)
    for row, label in enumerate(ROW_LABELS):
        y = layout.origin(row, 0)[1]
        draw.text((layout.margin, y + layout.panel[0] // 2 - 7), label, fill=_TEXT, font=font)

    def header(column: int, text: str) -> None:
        x, y = layout.origin(0, column)
        draw.text((x, y - layout.header_height + 2), text, fill=_TEXT, font=font)

    top, left, height, width = box
    scale = layout.panel[0] / target.shape[0]
    outline = (
        round(left * scale),
        round(top * scale),
        round((left + width) * scale) - 1,
        round((top + height) * scale) - 1,
    )
    for column, (name, image) in enumerate(columns):
        header(column, name)
        full = _fit(grey(image, data_range), layout.panel)
        ImageDraw.Draw(full).rectangle(outline, outline=_ZOOM_OUTLINE)
        if column > 0:
            _caption(ImageDraw.Draw(full), (4, layout.panel[0] - 16), _slice_scores(target, image, data_range), small)
        figure.paste(full, layout.origin(0, column))
        figure.paste(_fit(grey(_crop(image, box), data_range), layout.panel), layout.origin(1, column))
        if column == 0:
            bar = _colour_bar(layout.panel, error_max, "|error|", small)
        else:
            bar = _fit(colormap(errors[name], error_max), layout.panel)
        figure.paste(bar, layout.origin(2, column))
    for offset, (name, uncertainty) in enumerate(uncertainties.items()):
        column = len(columns) + offset
        uncertainty = np.asarray(uncertainty, dtype=np.float64)
        vmax = float(np.nanmax(uncertainty)) if np.isfinite(uncertainty).any() else 0.0
        vmax = vmax if vmax > 0 else 1.0
        header(column, f"{name} uncertainty")
        full = _fit(colormap(uncertainty, vmax), layout.panel)
        ImageDraw.Draw(full).rectangle(outline, outline=_ZOOM_OUTLINE)
        figure.paste(full, layout.origin(0, column))
        figure.paste(_fit(colormap(_crop(uncertainty, box), vmax), layout.panel), layout.origin(1, column))
        figure.paste(_colour_bar(layout.panel, vmax, "uncertainty", small), layout.origin(2, column))
    return figure
