"""Backbone families, one module per library, all behind the same interface (chosen from
`models.backbone.FAMILIES` by the record's `source`):

- `DEFAULT_WEIGHTS`: what --weights means when left out ("imagenet" for torchvision, "pretrained" for the others);
  "imagenet" is accepted only by a family whose default it is;
- `WEIGHTS_IN_FOLDER`: a local --weights PATH is a model folder (hf) rather than a state_dict file;
- `resolve(lib_name, weights, seed, feature, image_size, resize) -> BackboneRecord`: the record, without building;
- `build(record, weights, seed, flag) -> (module, record)`: the module mapping a normalised (B, 3, S, S) batch to
  (B, D), and its record completed (D, where the feature comes from);
- `stages(module) -> list[Stage]`: what --freeze_backbone_stages counts and --grad_checkpointing wraps (e2e).

A new family is one module here plus one line in `FAMILIES`; `parse_backbone` accepts `<source>:NAME` for it.
"""
