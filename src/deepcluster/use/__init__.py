"""What people do with a trained run: load it, embed and assign new images, search for similar images and
duplicates, export the network. Reads a run from disk (like `evaluate`), never through the trainer."""
