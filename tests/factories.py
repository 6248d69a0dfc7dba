import factory

from agents.models import AgentCost
from users.models import User


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = User
        skip_postgeneration_save = True

    email = factory.Sequence(lambda n: f"user{n}@example.com")
    password = factory.PostGenerationMethodCall("set_password", "correct-horse-battery")

    @factory.post_generation
    def _save(obj, create, extracted, **kwargs):
        if create:
            obj.save()


class StaffFactory(UserFactory):
    is_staff = True


class AgentCostFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = AgentCost
        django_get_or_create = ("agent_id",)

    agent_id = factory.Sequence(lambda n: f"agent-{n}")
    name = factory.LazyAttribute(lambda o: o.agent_id.replace("-", " ").title())
    description = "A test agent."
    cost_credits = 30
    default_cost_credits = factory.SelfAttribute("cost_credits")
