"""The embedded simulator: procedural sidewalk scenes, a crowd, robots, a batched CPU raycaster and a TorchRL env."""
