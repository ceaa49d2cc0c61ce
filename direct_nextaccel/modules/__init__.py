"""Neural-network pieces shared by NextAccel and MIAR: quantizer, VQ-VAE encoder/decoder, attention and decoding."""
