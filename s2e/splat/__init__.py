"""3D Gaussian Splatting scenes for the simulator: load captures, slice their layout, render them.

A splat scene is a bundle of two files: an INRIA-layout ``.ply`` of Gaussians (``ply``) and a
layout file (``layout``) that says how the capture sits in the world and where the robot may walk.
``scene`` plugs both into ``NavEnv`` through its scene-source and renderer seams, so tasks, rewards
and metrics are the ones of procedural streets. Rendering is gsplat on CUDA (``gsplat_backend``,
imported lazily) or the pure-PyTorch reference (``reference``) on CPU.
"""
