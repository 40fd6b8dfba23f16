"""RL post-training pieces (stage 2): the anchor-mixture distribution for TorchRL, the actor / critic
modules, fine-tuning strategies, env and collector factories, advantages and episode statistics.
``s2e.posttrain.PostTrainModule`` puts them together inside Lightning."""
