"""Model: hook points, HookedMusicGen, backends and loading."""
