"""Collision geometry and robot motion: disc footprints against walls, obstacles and pedestrians.

Everything is a signed distance: the robot is a disc, walls come from the solid-cell distance field,
obstacles are circles or oriented boxes, pedestrians are discs. A commanded motion is integrated in
substeps and a substep that would push the footprint deeper into anything is refused, so the robot
cannot pass through a wall or an obstacle however fast it is commanded, yet can always back out of a
contact. Contact *events* (not steps in contact) are what the benchmark counts as collisions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from s2e.sim.scene import ObstacleShape

#: Signed distance reported for padded (absent) obstacles and pedestrians.
FAR = 1e4


def sample_field(field: torch.Tensor, origin: torch.Tensor, resolution: float, xy: torch.Tensor) -> torch.Tensor:
    """Bilinear sample of per-scene grids field [B, H, W] at world points xy [B, K, 2] -> [B, K].

    Cells are sampled at their centres; points off the grid read the nearest border cell. Works on
    per-axis rows [B, K] and fetches the four corner cells with one gather: the crowd samples fields
    ~10 times per step on tiny tensors, where op count and layout, not arithmetic, are the cost.
    (``grid_sample`` would be faster still, but its different rounding turns flat plateaus of the
    distance field into noise that the crowd's normalized field gradient amplifies to unit vectors.)
    """
    b, h, w = field.shape
    cell = ((xy.transpose(1, 2) - origin[..., None]) / resolution - 0.5).contiguous()  # [B, 2, K]
    col, row = cell[:, 0].clamp(0, w - 1), cell[:, 1].clamp(0, h - 1)
    c0, r0 = col.long().clamp(max=w - 2), row.long().clamp(max=h - 2)  # truncation is the floor here: col, row >= 0
    fc, fr = col - c0, row - r0
    base = r0 * w + c0
    v00, v01, v10, v11 = field.reshape(b, h * w).gather(1, torch.cat([base, base + 1, base + w, base + (w + 1)], 1)).split(base.shape[1], 1)
    return (v00 * (1 - fc) + v01 * fc) * (1 - fr) + (v10 * (1 - fc) + v11 * fc) * fr


@dataclass(frozen=True)
class ObstacleSet:
    """Obstacles [B, O] prepared for the many distance queries of one step (each field [B, O, 1]).

    Preparing hoists everything that depends on the obstacles alone (rotation, shape switch,
    padding) out of the queries, and writes a circle as a box of zero half extents rounded by its
    radius, so a query is one branch-free formula of a dozen elementwise ops. The tensors are tiny,
    so op count and memory layout, not arithmetic, are what a step pays for: queries work on
    [B, O, K] (points last) so that every op runs along the long point axis, not along O ~ 6.
    """

    x: torch.Tensor
    y: torch.Tensor
    cos: torch.Tensor
    sin: torch.Tensor
    half_x: torch.Tensor  # half extents of the (inner) box: 0 for circles
    half_y: torch.Tensor
    rounding: torch.Tensor  # circle radius, 0 for boxes
    floor: torch.Tensor  # FAR for padded rows (which are also moved to a harmless zero box), -inf for real ones

    @classmethod
    def of(cls, obstacles: torch.Tensor, mask: torch.Tensor) -> "ObstacleSet":
        """Prepare obstacles [B, O, 8] (columns ``OBSTACLE_FIELDS``) with their mask [B, O]."""
        ob = torch.where(mask[..., None], obstacles, torch.zeros((), dtype=obstacles.dtype, device=obstacles.device))
        ob = ob.transpose(1, 2)[..., None]  # [B, 8, O, 1]: column c is ob[:, c]
        circle = ob[:, 6] == float(ObstacleShape.CIRCLE)
        zero = torch.zeros_like(ob[:, 3])
        floor = torch.where(mask[..., None], torch.full_like(zero, -torch.inf), torch.full_like(zero, FAR))
        return cls(
            x=ob[:, 0],
            y=ob[:, 1],
            cos=torch.cos(ob[:, 2]),
            sin=torch.sin(ob[:, 2]),
            half_x=torch.where(circle, zero, ob[:, 3]),
            half_y=torch.where(circle, zero, ob[:, 4]),
            rounding=torch.where(circle, ob[:, 3], zero),
            floor=floor,
        )

    def distance(self, xy: torch.Tensor) -> torch.Tensor:
        """Signed distance [B, O, K] from points xy [B, K, 2] to each obstacle surface (FAR if padded)."""
        dx, dy = xy[:, None, :, 0] - self.x, xy[:, None, :, 1] - self.y
        qx = (self.cos * dx + self.sin * dy).abs() - self.half_x
        qy = (self.cos * dy - self.sin * dx).abs() - self.half_y
        box = torch.hypot(qx.clamp_min(0), qy.clamp_min(0)) + torch.maximum(qx, qy).clamp_max(0)
        return torch.maximum(box - self.rounding, self.floor)  # a padded zero box is nearer than FAR to any point of the world

    def nearest(self, xy: torch.Tensor) -> torch.Tensor:
        """Distance [B, K] from points xy [B, K, 2] to the nearest obstacle (FAR without any)."""
        return self.distance(xy).amin(1)


def pedestrian_distance(pedestrians: torch.Tensor, mask: torch.Tensor, xy: torch.Tensor) -> torch.Tensor:
    """Distance from points xy [B, K, 2] to each pedestrian disc's edge -> [B, K, P] (FAR if padded)."""
    peds = pedestrians[:, None]
    d = torch.hypot(xy[..., 0:1] - peds[..., 0], xy[..., 1:2] - peds[..., 1]) - peds[..., 4]
    return torch.where(mask[:, None, :], d, FAR)


@dataclass
class Clearance:
    """Footprint clearance [B, K] to each kind of thing (negative = overlapping)."""

    wall: torch.Tensor
    obstacle: torch.Tensor
    pedestrian: torch.Tensor

    @property
    def total(self) -> torch.Tensor:
        return torch.minimum(torch.minimum(self.wall, self.obstacle), self.pedestrian)


def footprint_clearance(world, xy: torch.Tensor, radius: float, with_pedestrians: bool = True, obstacles: ObstacleSet | None = None) -> Clearance:
    """Clearance of discs of ``radius`` at points xy [B, K, 2] against the world's solid geometry.

    ``obstacles``: the scene's obstacles already prepared (``ObstacleSet.of``), when a caller queries
    them many times in one step.
    """
    scene = world.scene
    obstacles = obstacles if obstacles is not None else ObstacleSet.of(scene.obstacles, scene.obstacle_mask)
    wall = sample_field(world.solid_distance, scene.origin, scene.resolution, xy) - radius
    obstacle = obstacles.nearest(xy) - radius
    if with_pedestrians and scene.pedestrians.shape[1]:
        ped = pedestrian_distance(scene.pedestrians, scene.pedestrian_mask, xy).amin(-1) - radius
    else:
        ped = torch.full_like(wall, FAR)
    return Clearance(wall=wall, obstacle=obstacle, pedestrian=ped)


#: Substeps whose every refuse/accept outcome ``integrate_unicycle`` evaluates in one clearance query
#: (2**depth points per env): enough for the default 4 substeps, small enough to stay cheap.
_TREE_DEPTH = 4


def integrate_unicycle(
    world,
    xy: torch.Tensor,
    yaw: torch.Tensor,
    v: torch.Tensor,
    omega: torch.Tensor,
    dt: float,
    substeps: int,
    radius: float,
    obstacles: ObstacleSet | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Hold (v, omega) for ``dt`` in ``substeps`` blocked-motion substeps.

    Returns the new xy [B, 2], yaw [B] and ``blocked`` [B] (a substep was refused: the robot pushed
    into something). Turning in place never changes a disc footprint, so yaw always integrates.

    A substep moves from wherever the previous ones left the robot, so its proposal depends on which
    earlier substeps were refused. Rather than one clearance query per substep (each a few dozen tiny
    ops), the proposals of every refuse/accept pattern of up to ``_TREE_DEPTH`` substeps are
    queried at once, then the actual pattern is followed through them: same positions, same
    decisions, a fraction of the ops. ``obstacles``: the scene's, prepared (as for ``footprint_clearance``).
    """
    h = dt / substeps
    obstacles = obstacles if obstacles is not None else ObstacleSet.of(world.scene.obstacles, world.scene.obstacle_mask)
    half_turn, turn = 0.5 * omega * h, omega * h
    direction = []
    for _ in range(substeps):
        mid = yaw + half_turn  # mid-substep heading
        direction += [torch.cos(mid), torch.sin(mid)]  # on [B] each: cos/sin of a few hundred values wake OpenMP threads
        yaw = yaw + turn
    moves = torch.stack(direction, 1).view(-1, substeps, 2) * (v * h)[:, None, None]  # [B, S, 2]
    blocked = torch.zeros_like(v, dtype=torch.bool)
    for first in range(0, substeps, _TREE_DEPTH):
        xy, refused = _follow_substeps(world, xy, moves[:, first : first + _TREE_DEPTH], radius, obstacles)
        blocked |= refused
    return xy, torch.remainder(yaw + torch.pi, 2 * torch.pi) - torch.pi, blocked


def _follow_substeps(world, xy: torch.Tensor, moves: torch.Tensor, radius: float, obstacles: ObstacleSet) -> tuple[torch.Tensor, torch.Tensor]:
    """Blocked-motion substeps ``moves`` [B, S, 2] from xy [B, 2] -> (xy, any refusal) [B].

    Tree of reachable positions: after substep i there are 2**(i+1) nodes, the first half those
    where substep i was refused (the previous nodes), the second half where it was accepted (the
    previous nodes plus the move). One clearance query covers the start and every proposal, whose
    order in it is the nodes' order: node n's position is point n, and the clearance a substep
    compares against ("before") is always that of the node the robot is at.
    """
    nodes = xy[:, None]
    for i in range(moves.shape[1]):
        nodes = torch.cat([nodes, nodes + moves[:, i : i + 1]], 1)
    clear = footprint_clearance(world, nodes, radius, obstacles=obstacles).total  # [B, 2**S]
    node = torch.zeros(xy.shape[0], 1, dtype=torch.long, device=xy.device)
    refused = torch.zeros_like(node, dtype=torch.bool)
    for i in range(moves.shape[1]):
        before, after = clear.gather(1, node), clear.gather(1, node + 2**i)
        accept = (after >= 0) | (after >= before)
        node = torch.where(accept, node + 2**i, node)
        refused |= ~accept
    return nodes.gather(1, node[..., None].expand(-1, 1, 2))[:, 0], refused[:, 0]


class ContactTracker:
    """Counts contact events: a new touch counts once, however many steps the contact lasts.

    A contact starts when a move is refused or the footprint overlaps something; it ends only once
    the clearance exceeds ``release`` metres, so a robot blocked against a wall (which stops up to
    one substep short of it) stays in the same contact instead of re-counting every step.
    """

    def __init__(self, batch: int, device: torch.device, release: float = 0.05) -> None:
        self.release = release
        self.in_contact = torch.zeros(batch, dtype=torch.bool, device=device)
        self.count = torch.zeros(batch, dtype=torch.long, device=device)

    def update(self, blocked: torch.Tensor, clearance: torch.Tensor) -> torch.Tensor:
        """Update with this step's refusals and clearance [B]; returns new-contact events [B] bool."""
        touched = blocked | (clearance <= 1e-4)
        new = touched & ~self.in_contact
        self.in_contact = touched | (self.in_contact & (clearance < self.release))
        self.count += new.long()
        return new

    def reset(self, idx: torch.Tensor) -> None:
        self.in_contact[idx] = False
        self.count[idx] = 0
