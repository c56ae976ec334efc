"""The embed stage: t-SNE maps of two layers of a trained variant, and how well they keep the classes apart."""
