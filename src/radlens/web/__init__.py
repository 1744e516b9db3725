"""radlens.web: the web app — search X-rays by report and reports by X-ray, and see why (docs/web.md).

    from radlens.retrieval import Retriever
    from radlens.web import Settings, create_app

    app = create_app(Retriever.load("demo/index", "demo/model"), Settings())

``radlens serve`` runs it on uvicorn; ``radlens demo`` builds data, model and index first.
"""

from radlens.web.app import Settings, create_app

__all__ = ["Settings", "create_app"]
