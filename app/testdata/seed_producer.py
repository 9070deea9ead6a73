from confluent_kafka import Producer
import json
p = Producer({'bootstrap.servers': 'localhost:9092'})
def delivery_report(err, msg):
    if err is not None:
        print('Message delivery failed:', err)
    else:
        print('Message delivered to', msg.topic(), msg.partition())
event = {'user_id': 123, 'email': 'test@example.com'}
p.produce('user-registered', key='123', value=json.dumps(event), callback=delivery_report)
p.flush()
