"""Lambda handler of the jobs API: the Chalice app, every route behind IAM (SigV4) auth."""

from chalice.app import IAMAuthorizer

from fanout.web.app import create_app

app = create_app(authorizer=IAMAuthorizer())
