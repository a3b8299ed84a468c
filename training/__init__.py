"""Training, evaluation and the reproducible default model (`python -m training --help`).

Training-only dependencies (MTCNN for face detection, torch for the DCGAN faces of the
default data) are in `requirements-train.txt`; nothing here is imported by the service.
"""
