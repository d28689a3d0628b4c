"""Our own small `common` module for BARC-style ARC programs (`from common import *`), written from the
documented behaviour of the helpers that barc0/Llama-3.1-ARC-Potpourri-Induction-8B programs call most.

Grids are 2-D numpy integer arrays indexed grid[x, y]: x is the first index (the row), y the second. The sandbox
loads this text as module `common` (tasks/arc.py passes it); it imports numpy only, so it works inside the
isolated sandbox, which has no scipy. Left out: the generator-side helpers (random placement, random sprites),
symmetry detection and the rarer object predicates; a program that calls one fails with NameError and scores 0.
"""
import numpy as np


class Color:
    """ARC colours as the integers the grids hold (several names for the same colour, as BARC programs use)."""
    BLACK = BACKGROUND = TRANSPARENT = 0
    BLUE = 1
    RED = 2
    GREEN = 3
    YELLOW = 4
    GREY = GRAY = 5
    PINK = 6
    ORANGE = 7
    TEAL = PURPLE = 8
    MAROON = BROWN = 9
    ALL_COLORS = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
    NOT_BLACK = [1, 2, 3, 4, 5, 6, 7, 8, 9]


def neighbours(connectivity: int) -> list[tuple[int, int]]:
    if connectivity not in (4, 8):
        raise ValueError("connectivity must be 4 or 8")
    steps = [(-1, 0), (1, 0), (0, -1), (0, 1)]
    return steps + ([(-1, -1), (-1, 1), (1, -1), (1, 1)] if connectivity == 8 else [])


def flood_fill(grid, x, y, color, connectivity=4):
    """Recolour, in place, the region of grid[x, y]'s colour that is connected to (x, y)."""
    old = grid[x, y]
    if old == color:
        return
    stack = [(x, y)]
    while stack:  # iterative: large regions must not hit the recursion limit
        i, j = stack.pop()
        if 0 <= i < grid.shape[0] and 0 <= j < grid.shape[1] and grid[i, j] == old:
            grid[i, j] = color
            stack += [(i + di, j + dj) for di, dj in neighbours(connectivity)]


def draw_line(grid, x, y, end_x=None, end_y=None, length=None, direction=None, color=None, stop_at_color=()):
    """Draw from (x, y) to (end_x, end_y), or `length` cells along `direction` (steps of -1/0/1; to the edge when
    length is None), stopping before a cell whose colour is in stop_at_color. Returns the last cell drawn."""
    x, y = int(x), int(y)
    if end_x is not None and end_y is not None:
        length = max(abs(end_x - x), abs(end_y - y)) + 1
        direction = (end_x - x, end_y - y)
    dx, dy = (int(np.sign(d)) for d in direction)
    if length is None:
        length = 2 * max(grid.shape)
    last = (x, y)
    for k in range(length):
        i, j = x + k * dx, y + k * dy
        if not (0 <= i < grid.shape[0] and 0 <= j < grid.shape[1]):
            break
        if grid[i, j] in stop_at_color:
            break
        grid[i, j] = color
        last = (i, j)
    return last


def find_connected_components(grid, background=Color.BLACK, connectivity=4, monochromatic=True):
    """Connected regions of non-background cells, each returned as a grid of the input's shape holding that region
    and background elsewhere. monochromatic: a region holds one colour; else any non-background colours."""
    seen = np.zeros(grid.shape, dtype=bool)
    components = []
    for x, y in zip(*np.nonzero(grid != background)):
        if seen[x, y]:
            continue
        mask = np.zeros(grid.shape, dtype=bool)
        stack = [(x, y)]
        seen[x, y] = True
        while stack:
            i, j = stack.pop()
            mask[i, j] = True
            for di, dj in neighbours(connectivity):
                a, b = i + di, j + dj
                if (0 <= a < grid.shape[0] and 0 <= b < grid.shape[1] and not seen[a, b] and grid[a, b] != background
                        and (not monochromatic or grid[a, b] == grid[x, y])):
                    seen[a, b] = True
                    stack.append((a, b))
        components.append(np.where(mask, grid, background))
    return components


def bounding_box(grid, background=Color.BLACK):
    """(x, y, width, height) of the non-background cells: width along x, height along y."""
    xs, ys = np.nonzero(grid != background)
    if len(xs) == 0:
        return 0, 0, 0, 0
    return int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)


def bounding_box_mask(grid, background=Color.BLACK):
    x, y, w, h = bounding_box(grid, background)
    mask = np.zeros(grid.shape, dtype=bool)
    mask[x:x + w, y:y + h] = True
    return mask


def crop(grid, background=Color.BLACK):
    """The smallest sub-grid holding every non-background cell."""
    x, y, w, h = bounding_box(grid, background)
    return grid[x:x + w, y:y + h]


def blit(grid, sprite, x=0, y=0, background=None):
    """Copy sprite into grid (in place) with its corner at (x, y), clipped at the edges; cells of colour
    `background` in the sprite are transparent. Returns grid."""
    x, y = int(x), int(y)
    for i in range(sprite.shape[0]):
        for j in range(sprite.shape[1]):
            if (background is None or sprite[i, j] != background) and 0 <= x + i < grid.shape[0] \
                    and 0 <= y + j < grid.shape[1]:
                grid[x + i, y + j] = sprite[i, j]
    return grid


def blit_sprite(grid, sprite, x, y, background=Color.BLACK):
    return blit(grid, sprite, x, y, background)


def blit_object(grid, obj, background=Color.BLACK):
    """Draw a full-size object grid (as find_connected_components returns) where it already is."""
    return blit(grid, obj, 0, 0, background)


def scale_sprite(sprite, factor):
    """Each cell becomes a factor x factor block."""
    return np.kron(sprite, np.ones((factor, factor), dtype=sprite.dtype))


def translate(obj, x, y, background=Color.BLACK):
    """A copy moved by (x, y); cells moved off the grid are lost, uncovered cells are background."""
    out = np.full(obj.shape, background, dtype=obj.dtype)
    for i, j in np.ndindex(*obj.shape):
        if 0 <= i + x < obj.shape[0] and 0 <= j + y < obj.shape[1]:
            out[i + x, j + y] = obj[i, j]
    return out


def object_colors(obj, background=Color.BLACK):
    return [int(c) for c in np.unique(obj) if c != background]


def object_position(obj, background=Color.BLACK, anchor="upper left"):
    """(x, y) of a corner or centre of the object's bounding box ("upper left", "lower right", "center", ...);
    upper/lower pick along x, left/right along y, as bounding_box measures them."""
    x, y, w, h = bounding_box(obj, background)
    key = anchor.lower().replace(" ", "").replace("top", "upper").replace("bottom", "lower")
    px = {"upper": x, "lower": x + w - 1}.get(next((k for k in ("upper", "lower") if k in key), ""), x + (w - 1) / 2)
    py = {"left": y, "right": y + h - 1}.get(next((k for k in ("left", "right") if k in key), ""), y + (h - 1) / 2)
    return tuple(int(v) if float(v).is_integer() else v for v in (px, py))


def collision(_=None, object1=None, object2=None, x1=0, y1=0, x2=0, y2=0, background=Color.BLACK):
    """Do object1 placed at (x1, y1) and object2 placed at (x2, y2) share a non-background cell?"""
    return overlap(object1, object2, int(x2 - x1), int(y2 - y1), background, [(0, 0)])


def contact(_=None, object1=None, object2=None, x1=0, y1=0, x2=0, y2=0, background=Color.BLACK, connectivity=4):
    """Do the placed objects overlap or touch (4- or 8-neighbours)?"""
    return overlap(object1, object2, int(x2 - x1), int(y2 - y1), background, [(0, 0)] + neighbours(connectivity))


def overlap(a, b, dx, dy, background, moves) -> bool:
    for i, j in zip(*np.nonzero(a != background)):
        for mi, mj in moves:
            p, q = i - dx + mi, j - dy + mj
            if 0 <= p < b.shape[0] and 0 <= q < b.shape[1] and b[p, q] != background:
                return True
    return False
