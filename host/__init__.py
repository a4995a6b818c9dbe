"""The ComfyUI runtime of the pack: everything that talks to ComfyUI internals (ModelPatcher,
wrappers, conds, folder_paths) and holds no node schema. Imports go one way: nodes -> host -> core
(videoldm_core). Each stage's module has the name of its node module and its core module; see
docs/architecture.md."""
