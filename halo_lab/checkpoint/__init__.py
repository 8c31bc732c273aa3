"""Reading and checking saved models, below the model: ``integrity`` (torch files loaded with
``weights_only=True`` passed explicitly, one-line errors, the checkpoint checksum), ``weights`` (a hub
directory, weights file, Lightning ``.ckpt``, the reference package's files or a Hub repo id, read into a
model made by a builder the caller passes: it knows no model class) and ``compat`` (the reference
package's key maps and config translation)."""
