from flask import Flask

from flask_oa_recall import OARecall, RecallEvent, messages_recalled

app = Flask(__name__)
app.config["OA_RECALL_SDKAPPID"] = 1400000000  # your SDKAppID
# The token set in the Chat console (Webhook Configuration > authentication):
app.config["OA_RECALL_TOKENS"] = ["token-from-the-console"]
OARecall(app)


@messages_recalled.connect_via(app)
def on_recall(sender: Flask, event: RecallEvent, **extra: object) -> None:
    for key in event.msg_keys:
        print(f"hide {event.official_account} {key}")  # your database, index, cache...
