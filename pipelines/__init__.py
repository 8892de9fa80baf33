"""The Ray streaming pipeline: plan -> denoise -> decode -> sharded sink, with accounting."""
