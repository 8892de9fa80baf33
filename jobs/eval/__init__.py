"""`latentmill eval`: decoders compared on held-out latents (images, video) by quality and speed."""
