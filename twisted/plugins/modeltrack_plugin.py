from twisted.application.service import ServiceMaker

modeltrack = ServiceMaker(
    "modeltrack",
    "modeltrack.ops.tap",
    "A streaming LLM API proxy that records the exact cost of every call.",
    "modeltrack",
)
