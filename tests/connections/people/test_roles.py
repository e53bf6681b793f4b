"""Roles from the identity provider's groups, set at every sign-in: joins and leaves audited as the admin's role
changes are, a group no longer sent takes its role away, and staff and superuser status come from a claim only
where OIDC_STAFF_GROUPS / OIDC_SUPERUSER_GROUPS say so."""

from django.contrib.auth.models import Group, User
from django.test import Client

from connections.config.apply import config_apply, config_plan
from connections.config.export import config_export
from connections.models import AuditEvent, PersonIdentity
from tests.connections.people.conftest import sign_in


def role_events() -> list[str]:
    return list(AuditEvent.objects.filter(action="role_update").order_by("id").values_list("detail", flat=True))


def signed_in_user() -> User:
    return PersonIdentity.objects.select_related("user").get().user


def test_roles_follow_the_groups_at_every_sign_in(identity_provider, settings):
    # given two roles mapped from groups, one of them from two groups
    finance, support = Group.objects.create(name="Finance"), Group.objects.create(name="Support")
    settings.OIDC_ROLE_MAP = {"fin": ["Finance"], "fin-eu": ["Finance"], "help": ["Support"]}
    username, password = identity_provider.person("hana", groups=["fin", "help", "other"])

    # when the person signs in
    sign_in(Client(), identity_provider, username, password)

    # then they hold both roles, and each join is audited as the role page audits it
    assert set(signed_in_user().groups.all()) == {finance, support}
    assert role_events() == ["Role Finance: members added hana.", "Role Support: members added hana."]
    assert set(AuditEvent.objects.filter(action="role_update").values_list("actor_label", flat=True)) == {
        "identity provider"
    }

    # when the provider stops sending "help" and sends "fin-eu" instead of "fin", and they sign in again
    identity_provider.server.set_person(username, password, groups=["fin-eu"])
    sign_in(Client(), identity_provider, username, password)

    # then Support is gone, Finance stays (no event for it), and the leave is audited
    assert list(signed_in_user().groups.all()) == [finance]
    assert role_events()[2:] == ["Role Support: members removed hana."]


def test_a_person_whose_groups_map_to_no_role_keeps_none(identity_provider, settings):
    # given a person an administrator had put in a role by hand
    manual = Group.objects.create(name="Hand-made")
    settings.OIDC_ROLE_MAP = {"fin": ["Finance"]}  # a role that does not exist is not created either
    username, password = identity_provider.person("ivan", groups=["other"])
    sign_in(Client(), identity_provider, username, password)
    signed_in_user().groups.add(manual)

    # when they sign in again
    sign_in(Client(), identity_provider, username, password)

    # then the roles are exactly what the groups map to: none
    assert list(signed_in_user().groups.all()) == []
    assert not Group.objects.filter(name="Finance").exists()


def test_without_a_role_map_roles_are_given_in_control_room(identity_provider):
    # given a person an administrator put in a role, and no OIDC_ROLE_MAP (Google sends no groups)
    support = Group.objects.create(name="Support")
    username, password = identity_provider.person("ola", groups=["support"])
    sign_in(Client(), identity_provider, username, password)
    signed_in_user().groups.add(support)

    # when they sign in again
    sign_in(Client(), identity_provider, username, password)

    # then the role stays
    assert list(signed_in_user().groups.all()) == [support]


def test_staff_and_superuser_never_come_from_a_claim_unless_mapped(identity_provider, settings):
    # given a person in groups named "admins" and "staff", and nothing mapped to staff or superuser
    username, password = identity_provider.person("jo", groups=["admins", "staff", "is_staff"])
    sign_in(Client(), identity_provider, username, password)
    user = signed_in_user()
    assert not user.is_staff and not user.is_superuser

    # when the operator maps "staff" to staff status and "admins" to superuser, and the person signs in again
    settings.OIDC_STAFF_GROUPS, settings.OIDC_SUPERUSER_GROUPS = ["staff"], ["admins"]
    sign_in(Client(), identity_provider, username, password)
    user.refresh_from_db()
    assert user.is_staff and user.is_superuser

    # when they leave "admins" at the provider and sign in again
    identity_provider.server.set_person(username, password, groups=["staff"])
    sign_in(Client(), identity_provider, username, password)
    user.refresh_from_db()
    assert user.is_staff and not user.is_superuser
    assert "superuser removed by the groups" in AuditEvent.objects.filter(action="sign_in").latest("id").detail


def test_a_nested_keycloak_group_counts_only_by_its_full_path(identity_provider, settings):
    # given staff and superuser mapped from top-level groups, and a person in a partner's nested "admins" group
    settings.OIDC_STAFF_GROUPS, settings.OIDC_SUPERUSER_GROUPS = ["staff"], ["admins"]
    username, password = identity_provider.person("rae", groups=["/partners/acme/admins", "/staff"])

    # when they sign in
    sign_in(Client(), identity_provider, username, password)

    # then the top-level /staff counts as staff, but the nested group is not "admins"
    user = signed_in_user()
    assert user.is_staff and not user.is_superuser


def test_staff_status_an_administrator_gave_stays_while_staff_is_not_mapped(identity_provider):
    username, password = identity_provider.person("kim")
    sign_in(Client(), identity_provider, username, password)
    User.objects.filter(pk=signed_in_user().pk).update(is_staff=True)

    sign_in(Client(), identity_provider, username, password)

    assert signed_in_user().is_staff


def test_a_deactivated_person_is_refused(identity_provider):
    username, password = identity_provider.person("lee")
    sign_in(Client(), identity_provider, username, password)
    User.objects.filter(pk=signed_in_user().pk).update(is_active=False)

    client = Client()
    answer = sign_in(client, identity_provider, username, password)

    assert answer.status_code == 403 and "deactivated" in answer.content.decode()
    assert "_auth_user_id" not in client.session


def test_apply_config_maps_groups_to_a_role(identity_provider, tmp_path):
    # given a role whose identity provider groups come from apply_config, with no OIDC_ROLE_MAP, and a member of
    # its own in the file
    document = """
users:
  - username: ops
roles:
  - name: Payables
    permissions: [view_connections]
    users: [ops]
    identity_provider_groups: [finance-payables, /finance/payables]
"""
    config_apply(config_plan(document, base_dir=tmp_path))
    username, password = identity_provider.person("pat", groups=["finance-payables"])

    # when a person in one of the groups signs in
    sign_in(Client(), identity_provider, username, password)

    # then they get the role, and the mapping is exported and audited
    assert list(signed_in_user().groups.values_list("name", flat=True)) == ["Payables"]
    (role,) = config_export()["roles"]
    assert role["identity_provider_groups"] == ["/finance/payables", "finance-payables"]
    assert "identity provider groups now /finance/payables, finance-payables (were none)" in " ".join(role_events())

    # when the same file is applied again
    again = config_plan(document, base_dir=tmp_path)
    config_apply(again)

    # then it changes nothing: the person the identity provider gave the role to keeps it, beside the file's member
    assert [(change.kind, change.name, change.action) for change in again.changes] == [
        ("user", "ops", "unchanged"),
        ("role", "Payables", "unchanged"),
    ]
    assert set(Group.objects.get(name="Payables").user_set.values_list("username", flat=True)) == {"ops", "pat"}

    # when the person leaves the group at the identity provider and signs in again (the file not applied again)
    identity_provider.server.set_person(username, password, groups=["other"])
    sign_in(Client(), identity_provider, username, password)

    # then the role is gone, and the file's member keeps it
    assert list(signed_in_user().groups.all()) == []
    assert list(Group.objects.get(name="Payables").user_set.values_list("username", flat=True)) == ["ops"]


def test_apply_config_keeps_the_members_oidc_role_map_gave_a_role(identity_provider, settings, tmp_path):
    # given a role OIDC_ROLE_MAP fills, which a person got at sign-in
    settings.OIDC_ROLE_MAP = {"help": ["Support"]}
    document = "roles:\n  - name: Support\n    permissions: [view_connections]\n"
    config_apply(config_plan(document, base_dir=tmp_path))
    username, password = identity_provider.person("uma", groups=["help"])
    sign_in(Client(), identity_provider, username, password)

    # when the file is applied again, then nothing changes and the person keeps the role
    again = config_plan(document, base_dir=tmp_path)
    config_apply(again)
    assert [change.action for change in again.changes] == ["unchanged"]
    assert list(signed_in_user().groups.values_list("name", flat=True)) == ["Support"]
