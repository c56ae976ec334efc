"""The lab's networks, one module per network (NAME, the nn.Module, build(config)), and the backbone
registry (backbones.py). pipelines/models.py registers them and is what the rest of the code imports."""
