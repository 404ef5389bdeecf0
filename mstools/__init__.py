"""mstools: look inside MusicGen and steer it.

>>> import mstools
>>> model = mstools.load_musicgen("testbed")          # offline, embedded
>>> model.hook_names[:3]
['hook_embed', 'blocks.0.hook_resid_pre', 'blocks.0.hook_attn_out']
"""
__version__ = "0.1.0"
