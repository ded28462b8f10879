from twisted.application.service import ServiceMaker

modeltrack = ServiceMaker(
    "modeltrack",
    "modeltrack.tap",
    "A streaming LLM API proxy that records the exact cost of every call.",
    "modeltrack",
)
